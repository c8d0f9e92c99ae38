"""`tuneforge eval`: on a run's own eval file it reproduces what training measured (base == eval_before,
tuned == eval_after, same greedy generations, so the run's template and adapter are the ones used); the
report is complete and self-contained; bad input exits 2 with a message naming what is wrong."""

import html
import json
import re

import pytest

import tiny
from tuneforge import cli
from tuneforge.errors import UserError
from tuneforge.evaluation.run_eval import Request, evaluate


@pytest.fixture(scope="module")
def run(sft_run):
    """The session's short LoRA run (tests/conftest.py): its before/after evaluation covers every eval row (7
    prompts, 7 loss samples); read-only."""
    return sft_run


def test_eval_reproduces_the_runs_before_and_after(run, tmp_path):
    out = evaluate(Request(str(run), str(run.parent / "eval.jsonl"), output=str(tmp_path / "ev")))
    summary = json.loads((out / "eval.json").read_text())
    trained = json.loads((run / "metrics.json").read_text())
    assert summary["rows"] == 7 and list(summary["models"]) == ["base", "tuned"]
    for name, key in (("base", "eval_before"), ("tuned", "eval_after")):
        got, want = summary["models"][name], trained[key]
        for metric in ("loss", "perplexity", "exact_match", "token_f1"):
            assert got[metric] == pytest.approx(want[metric], rel=1e-5, abs=1e-6), (name, metric)
        assert {"rouge_l", "bleu", "chrf"} <= set(got)
    assert summary["models"]["tuned"]["loss"] < summary["models"]["base"]["loss"]
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    gens = [json.loads(x) for x in (run / "generations.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["base"], r["tuned"]) for r in rows] == [(g["prompt"], g["base"], g["tuned"]) for g in gens]
    assert summary["chat_template"] == json.loads((run / "template.json").read_text())["chat_template"]

    differ = sum(" ".join(r["base"].split()) != " ".join(r["tuned"].split()) for r in rows)
    md = (out / "eval.md").read_text()
    assert f"Where the models differ ({differ} of 7 rows)" in md and "| exact_match |" in md
    page = (out / "eval.html").read_text()
    assert f"Where the models differ ({differ} of 7 rows)" in page
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "http" not in page.replace("http-equiv", "")
    assert page.count('src="data:image/png;base64,') == 1 and (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    assert "<|im_start|>" not in page  # nothing unescaped from the template
    # the tables show what was asked (the last user turn), not the rendered prompt with its system prompt
    assert all(r["question"] and r["question"] in r["prompt"] for r in rows)
    assert "&lt;|im_start|&gt;" not in page and html.escape(rows[0]["question"]) in page


def test_eval_of_one_model_and_of_pretrain_rows(tiny_model_dir, tmp_path):
    data = tiny.write_jsonl(tmp_path / "text.jsonl", [{"text": "the sky is blue . the grass is green ."}] * 3)
    out = evaluate(Request(str(tiny_model_dir), str(data), output=str(tmp_path / "one"), precision="fp32"))
    summary = json.loads((out / "eval.json").read_text())
    assert summary["stage"] == "pretrain" and list(summary["models"]) == [tiny_model_dir.name]
    assert set(summary["models"][tiny_model_dir.name]) == {"loss", "perplexity", "supervised_tokens", "seconds"}
    # 10 words and 9 spaces + EOS = 20 tokens a row, of which the 19 after the first are predicted
    assert summary["models"][tiny_model_dir.name]["supervised_tokens"] == 3 * 19


@pytest.mark.parametrize("metrics, data, message", [
    (["loss", "bleurt"], "eval.jsonl", "--metrics: unknown bleurt"),
    (["accuracy"], "eval.jsonl", "accuracy, macro_f1 are for classification runs"),
    (None, "nope.jsonl", "nope.jsonl: no such data file"),
])
def test_bad_input_is_a_user_error_and_writes_nothing(run, tmp_path, metrics, data, message):
    with pytest.raises(UserError, match=re.escape(message)):
        evaluate(Request(str(run), str(run.parent / data), metrics=metrics, output=str(tmp_path / "ev")))
    assert not (tmp_path / "ev").exists()


def test_cli_bad_input_exits_2_without_traceback(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_quiet_libraries", lambda: None)  # in process: leave global warning state alone
    code = cli.main(["eval", str(run), "--data", str(run.parent / "eval.jsonl"), "--metrics", "loss,bleurt",
                     "--output", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert code == 2 and "--metrics: unknown bleurt" in err and "Traceback" not in err
    assert not (tmp_path / "ev").exists()


def test_eval_bounds_the_kernel_caches_before_its_first_matmul(tiny_model_dir, tmp_path, monkeypatch):
    """As training does (training.kernel_cache_entries, tuneforge/train/kernel_cache.py): generation over prompts
    of many lengths would otherwise fill oneDNN's caches with a kernel per shape. The bound is set before the
    precision probe, the process's first bf16 matmul."""
    import tuneforge.evaluation.run_eval as run_eval

    calls: list = []
    monkeypatch.setattr(run_eval, "bound_kernel_caches", lambda entries: calls.append(("bound", entries)) or {})
    probe = run_eval.resolve_precision
    monkeypatch.setattr(run_eval, "resolve_precision", lambda *a: calls.append(("precision",)) or probe(*a))
    data = tiny.write_jsonl(tmp_path / "text.jsonl", [{"text": "the sky is blue ."}] * 2)
    evaluate(Request(str(tiny_model_dir), str(data), output=str(tmp_path / "one"), precision="fp32"))
    assert calls == [("bound", 64), ("precision",)]
