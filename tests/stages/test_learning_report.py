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


def test_a_run_whose_loss_rose_says_the_rate_is_too_high(make_config):
    """Full fine-tuning of the tiny model at a rate of 1.0 without clipping: the loss leaves its first value
    (7.8) for ~30-70 and stays there. The run finishes (nothing is non-finite) and says why it is bad."""
    cfg = make_config(method={"name": "full"}, training__max_steps=40, training__learning_rate=1.0,
                      training__max_grad_norm=None, eval__generate_samples=0, eval__before=False)
    lines: list[str] = []
    out = STAGES["sft"].run(cfg, lines.append)
    metrics = json.loads((out / "metrics.json").read_text())
    history = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    verdict = metrics["learning"]
    assert verdict["diverged"] is True and verdict["under_learned"] is False, verdict
    assert verdict["rise"]["tail_mean_loss"] > 1.5 * history[0]["loss"]  # worse than the untrained model
    assert verdict["suggestions"] == ["a lower rate: training.learning_rate=0.333",
                                      "clipping: training.max_grad_norm=1.0", "a warmup: training.warmup_ratio=0.03"]
    warning = [x for x in lines if x.startswith("warning: the run's training loss rose")]
    assert len(warning) == 1 and "rose from the start" in warning[0]
    assert not any(x.startswith("warning: the run may have under-learned") for x in lines)
    report = (out / "report.md").read_text()
    assert "## Learning: the training loss rose again" in report and verdict["reasons"][0] in report
