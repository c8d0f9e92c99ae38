"""A run with no learning rate and no epochs in its config (issue 20 items 2 and 5) trains at the method's
default rate for as many passes as the recipe chose; the log, metrics.json, report.md and the saved config.yaml
say what was chosen and why. Explicit keys win."""

import json

import yaml

import tuneforge.train.recipe as recipe
from tuneforge.methods import METHODS
from tuneforge.stages import STAGES


def test_open_rate_and_epochs_come_from_method_and_data(make_config, monkeypatch):
    monkeypatch.setattr(recipe, "TARGET_STEPS", 20)  # keep the run short: 42 rows at batch 4 = 11 steps a pass
    cfg = make_config(training__max_steps=None, training__learning_rate=None, eval__generate_samples=0,
                      eval__before=False)
    lines: list[str] = []
    out = STAGES["sft"].run(cfg, lines.append)
    metrics = json.loads((out / "metrics.json").read_text())
    lr = METHODS["lora"].default_lr
    assert metrics["recipe"]["learning_rate"] == {"value": lr, "source": "method default",
                                                  "why": "training.learning_rate not given: method lora's default rate"}
    assert metrics["recipe"]["epochs"]["value"] == 2.0 and metrics["recipe"]["epochs"]["source"] == "data size"
    assert metrics["train"]["steps"] == 22
    history = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert max(h["lr"] for h in history) <= lr and history[-1]["step"] == 22
    saved = yaml.safe_load((out / "config.yaml").read_text())["training"]
    assert (saved["learning_rate"], saved["epochs"]) == (lr, 2.0)  # a rerun of config.yaml trains the same
    assert any(x.startswith("recipe: training.epochs=2 (42 examples give 11") for x in lines)
    assert any(x.startswith(f"recipe: training.learning_rate={lr:g}") for x in lines)
    report = (out / "report.md").read_text()
    assert "## Recipe" in report and "method lora's default rate" in report


def test_explicit_rate_and_epochs_win(make_config, tmp_path):
    cfg = make_config(training__max_steps=None, training__learning_rate=1e-2, training__epochs=1,
                      eval__generate_samples=0, eval__before=False)
    lines: list[str] = []
    out = STAGES["sft"].run(cfg, lines.append)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"]["learning_rate"]["source"] == metrics["recipe"]["epochs"]["source"] == "config"
    assert metrics["train"]["steps"] == 11 and not any(x.startswith("recipe:") for x in lines)


def test_open_schedule_trains_lora_at_a_constant_rate(make_config):
    """No training.lr_scheduler in the config: LoRA's default schedule (constant, no warmup) is what the steps
    used, and what metrics.json, report.md and config.yaml say."""
    from tuneforge.config.schema import Config

    raw = make_config(training__max_steps=6, training__learning_rate=5e-3, eval__generate_samples=0,
                      eval__before=False).model_dump(exclude_unset=True)
    raw["training"] = {k: v for k, v in raw["training"].items() if k not in ("lr_scheduler", "warmup_ratio")}
    out = STAGES["sft"].run(Config.model_validate(raw), lambda _m: None)
    history = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [h["lr"] for h in history] == [5e-3] * 6
    losses = [h["loss"] for h in history]
    assert all(x == x for x in losses) and losses[-1] < losses[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"]["lr_scheduler"]["source"] == "method default"
    saved = yaml.safe_load((out / "config.yaml").read_text())["training"]
    assert (saved["lr_scheduler"], saved["warmup_ratio"]) == ("constant", 0.0)
    assert "| training.lr_scheduler | constant (warmup_ratio 0) |" in (out / "report.md").read_text()
