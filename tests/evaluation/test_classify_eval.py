"""`tuneforge eval` on a classify run: base (untrained head) and tuned classifier on the same labelled rows
reproduce the accuracy / macro-F1 / loss the run measured before and after training; the report lists the
rows where they disagree and embeds the confusion matrices."""

import json

import pytest

import tiny
from tuneforge.config.schema import Config
from tuneforge.errors import DataError
from tuneforge.evaluation.run_eval import Request, evaluate
from tuneforge.stages import STAGES


@pytest.fixture(scope="module")
def cls_run(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cls-eval")
    cfg = Config.model_validate({
        "model": str(tiny_bert_dir), "stage": "classify", "method": {"name": "full"},
        "data": {"train": str(tiny.write_jsonl(root / "train.jsonl", tiny.toy_cls_rows(64))),
                 "eval": str(tiny.write_jsonl(root / "eval.jsonl", tiny.toy_cls_rows(24, seed=1)))},
        "training": {"max_steps": 30, "learning_rate": 3e-3, "batch_size": 8, "warmup_ratio": 0.0,
                     "lr_scheduler": "constant", "max_length": 128, "progress": False, "precision": "fp32"},
        "output_dir": str(root / "run"), "seed": 0,
    })
    return STAGES["classify"](cfg)


def test_classify_eval_reproduces_before_and_after(cls_run, tmp_path):
    out = evaluate(Request(str(cls_run), str(cls_run.parent / "eval.jsonl"), output=str(tmp_path / "ev")))
    summary = json.loads((out / "eval.json").read_text())
    trained = json.loads((cls_run / "metrics.json").read_text())
    for name, key in (("base", "eval_before"), ("tuned", "eval_after")):
        for metric in ("accuracy", "macro_f1", "loss"):
            assert summary["models"][name][metric] == pytest.approx(trained[key][metric], abs=1e-5), (name, metric)
    assert summary["models"]["tuned"]["accuracy"] > summary["models"]["base"]["accuracy"]
    assert summary["details"]["tuned"]["confusion_matrix"] == trained["eval_after"]["confusion_matrix"]
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and {r["label"] for r in rows} == {"pos", "neg"}
    differ = sum(r["base"] != r["tuned"] for r in rows)
    assert f"Where the models differ ({differ} of 24 rows)" in (out / "eval.md").read_text()
    page = (out / "eval.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and (out / "confusion.png").is_file()


def test_unknown_label_is_a_data_error_before_loading(cls_run, tmp_path):
    bad = tiny.write_jsonl(tmp_path / "bad.jsonl",
                           [{"text": "yes fine", "label": "pos"}, {"text": "no", "label": "meh"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: label 'meh' is not one of the run's labels"):
        evaluate(Request(str(cls_run), str(bad), output=str(tmp_path / "ev")))
    assert not (tmp_path / "ev").exists()


def test_classifier_loading_bounds_the_kernel_caches_first(cls_run, monkeypatch):
    """`tuneforge predict` and classify eval load through load_classifier: it sets the run's kernel-cache bound
    (training.kernel_cache_entries) before any matmul, as training does."""
    from tuneforge.predict import load_classifier
    from tuneforge.train import kernel_cache

    calls: list = []
    monkeypatch.setattr(kernel_cache, "bound_kernel_caches", lambda entries: calls.append(entries) or {})
    clf = load_classifier(cls_run)
    assert calls == [64] and clf.labels
