"""The under-learning verdict (report/learning.py) reaches the log, metrics.json and report.md of a real run:
a tiny SFT run stopped early at a low rate, its loss still falling, is flagged with the numbers of its own
train_log.jsonl."""

import json

from tuneforge.report.learning import check_learning
from tuneforge.stages import STAGES


def test_an_early_stopped_run_says_it_under_learned(make_config):
    cfg = make_config(training__max_steps=12, training__learning_rate=3e-3, training__max_grad_norm=0.01,
                      eval__generate_samples=0, eval__before=False)
    lines: list[str] = []
    out = STAGES["sft"].run(cfg, lines.append)
    metrics = json.loads((out / "metrics.json").read_text())
    history = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    verdict = metrics["learning"]
    assert verdict == json.loads(json.dumps(check_learning(
        history, [metrics["eval_after"]], metric_names=("loss", "perplexity", "exact_match", "token_f1"),
        learning_rate=3e-3, epochs=cfg.training.epochs, max_steps=12, max_grad_norm=0.01)))
    assert verdict["under_learned"] is True, verdict
    assert verdict["loss"]["tail_relative_drop"] >= 0.1
    assert any("training.max_grad_norm=null" in s for s in verdict["suggestions"])  # every step clipped at 0.01
    assert "training.max_steps=24" in verdict["suggestions"][0]
    warning = [x for x in lines if x.startswith("warning: the run may have under-learned")]
    assert len(warning) == 1 and verdict["reasons"][0] in warning[0]
    report = (out / "report.md").read_text()
    assert "## Learning: this run stopped while still learning" in report and verdict["reasons"][0] in report
