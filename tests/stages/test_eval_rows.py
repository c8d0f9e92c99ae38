"""Evaluation sees what the user gave it (issue 20, item 4): every eval row is scored by default, and a cap
(eval.max_samples, eval.generate_samples, `tuneforge eval --max-samples`) is said as "N of M" in the log,
metrics.json and the report."""

import json

import tiny
from tuneforge.config.schema import Config, EvalConfig
from tuneforge.data.stage_data import eval_counts
from tuneforge.evaluation.eval_report import render_markdown
from tuneforge.evaluation.request import first_rows, rows_note
from tuneforge.stages import STAGES


def _classify_run(tiny_bert_dir, tmp_path, name: str, **eval_block):
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.toy_cls_rows(16))
    evals = tiny.write_jsonl(tmp_path / "eval.jsonl", tiny.toy_cls_rows(300, seed=1))
    cfg = Config.model_validate({
        "model": str(tiny_bert_dir), "stage": "classify", "method": {"name": "full"},
        "data": {"train": str(train), "eval": str(evals)},
        "training": {"max_steps": 1, "batch_size": 8, "progress": False, "precision": "fp32", "report_to": []},
        "eval": {"before": False, **eval_block}, "output_dir": str(tmp_path / name), "seed": 0})
    lines: list[str] = []
    out = STAGES["classify"].run(cfg, lines.append)
    return out, json.loads((out / "metrics.json").read_text()), "\n".join(lines)


def test_default_scores_every_eval_row_and_a_cap_says_n_of_m(tiny_bert_dir, tmp_path):
    assert EvalConfig().max_samples is None
    out, metrics, log = _classify_run(tiny_bert_dir, tmp_path, "all")
    assert metrics["data"]["eval"]["examples"] == 300 and metrics["data"]["eval"]["scored"] == "300 of 300"
    assert "of 300 eval rows" not in log
    assert "scored on 300 of 300 eval rows." in (out / "report.md").read_text()

    out, metrics, log = _classify_run(tiny_bert_dir, tmp_path, "capped", max_samples=50)
    assert metrics["data"]["eval"]["examples"] == 50
    assert metrics["data"]["eval"]["scored"] == "50 of 300" and metrics["data"]["eval"]["records_available"] == 300
    assert "scoring 50 of 300 eval rows (eval.max_samples=50" in log
    assert "scored on 50 of 300 eval rows (eval.max_samples" in (out / "report.md").read_text()


def test_generation_metrics_say_how_many_rows_they_cover(make_config):
    lines: list[str] = []
    counts = eval_counts(make_config(eval__generate_samples=16), 300, lines.append)
    assert counts == {"records_available": 300, "scored": "300 of 300", "generated": "16 of 300"}
    assert len(lines) == 1 and "16 of 300 eval rows (eval.generate_samples=16)" in lines[0]
    lines.clear()
    assert eval_counts(make_config(eval__max_samples=400, eval__generate_samples=16), 10, lines.append) == {
        "records_available": 10, "scored": "10 of 10", "generated": "10 of 10"}
    assert lines == []


def test_tuneforge_eval_reports_rows_of_the_file():
    rows = list(range(300))
    used, counted = first_rows(rows, None)
    assert len(used) == 300 and rows_note(counted) == "300 rows"
    used, counted = first_rows(rows, 200)
    assert len(used) == 200 and counted == {"rows": 200, "rows_in_file": 300}
    summary = {"target": "run", "data": "eval.jsonl", "stage": "sft", "models": {"base": {"loss": 1.0}}, **counted}
    assert "200 of 300 rows (first 200, --max-samples)" in render_markdown(summary, [], [])
