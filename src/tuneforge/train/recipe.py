"""The recipe a run trains with when the config leaves it open. training.learning_rate null: the method's own
default rate (each method carries `default_lr`). training.epochs null: enough passes over a small data set to
learn it, about TARGET_STEPS optimizer steps (TARGET_STEPS_BY_UNIT for classification; at most MAX_EPOCHS
passes), and one pass over a corpus that gives that many steps or more by itself. training.lr_scheduler not given,
on a stage in SCHEDULED_STAGES: the method's default_schedule where it has one (a constant rate, no warmup: every
method but bottleneck adapters, which keep the schema's cosine). Explicit keys always win. What was chosen and
why goes to the log and to metrics.json's `recipe` block.

    recipe = apply_recipe(cfg, n_train_examples, log)   # fills cfg.training in place; returns the recipe block
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tuneforge.config.schema import Config
from tuneforge.methods import METHODS
from tuneforge.stage_info import stage_info

# Measured by bench/defaults_study.py (docs/defaults.md): a 64-row fact set needed ~160 steps at batch 8 to be
# learned whole. A classifier's new head needs more: on the 400-row, 3-label set (MiniLM + LoRA at 2e-3, 3 seeds)
# 150 steps left one label unlearned (accuracy 0.680), 300 0.784, 450 0.918, 600 0.953, 900 0.989.
TARGET_STEPS = 150
TARGET_STEPS_BY_UNIT = {"samples": 900}  # the loss unit of classification (stage classify)
MAX_EPOCHS = 20
# Stages whose loss is a supervised objective over a fixed data set: the recipe sizes their epochs. Preference
# and RL stages keep one pass (more passes over pairs / prompts overfit the reference or cost generations).
SIZED_LOSS_UNITS = ("supervised_tokens", "samples")
# Where a method's default_schedule applies (measured there: docs/defaults-zen4.md, docs/defaults-full-schedule.md,
# docs/defaults-methods.md; the preference / RL stages go through TRL's own schedules and were not measured).
SCHEDULED_STAGES = ("sft", "pretrain", "classify")


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int, world_size: int = 1) -> int:
    """Optimizer steps of one pass over `n_examples` (every process takes batch_size per micro-batch)."""
    return max(1, math.ceil(n_examples / (batch_size * grad_accum * world_size)))


def target_steps(loss_unit: str) -> int:
    """The optimizer steps a small data set is sized to, by the stage's loss unit."""
    return TARGET_STEPS_BY_UNIT.get(loss_unit, TARGET_STEPS)


def choose_epochs(n_examples: int, per_epoch: int, sized: bool, target: int | None = None) -> tuple[float, str]:
    """(epochs, why) for a run that gave neither epochs nor max_steps; `target`: the steps to reach
    (default TARGET_STEPS)."""
    if not sized:
        return 1.0, "one pass (this stage's epochs are not sized to the data)"
    target = TARGET_STEPS if target is None else target
    if per_epoch >= target:
        return 1.0, (f"one pass: {n_examples} examples already give {per_epoch} optimizer steps "
                     f"(>= {target})")
    epochs = min(MAX_EPOCHS, math.ceil(target / per_epoch))
    capped = f", capped at {MAX_EPOCHS} passes" if epochs == MAX_EPOCHS else ""
    return float(epochs), (f"{n_examples} examples give {per_epoch} optimizer steps per pass; {epochs} passes "
                           f"reach ~{epochs * per_epoch} steps (target {target}){capped}")


def default_rate(method: str, stage: str) -> tuple[float, str]:
    """(rate, why) for a run that leaves training.learning_rate open: the method's default_lr on a supervised stage
    (the stages the recipe sizes), its pairs_lr (else default_lr) on a preference / RL / reward stage."""
    m = METHODS[method]
    if stage_info(stage).loss_unit in SIZED_LOSS_UNITS or m.pairs_lr is None:
        return m.default_lr, f"training.learning_rate not given: method {method}'s default rate"
    return m.pairs_lr, f"training.learning_rate not given: method {method}'s default rate for {stage}'s pairs/prompts"


def choose(cfg: Config, n_examples: int, world_size: int = 1) -> dict:
    """The recipe block for `cfg` and a training set of `n_examples`, without changing cfg:
    {"learning_rate": {"value", "source", "why"}, "epochs": {...}, "steps_per_epoch"}."""
    t = cfg.training
    if t.learning_rate is not None:
        lr = {"value": t.learning_rate, "source": "config", "why": "training.learning_rate given"}
    else:
        value, why = default_rate(cfg.method.name, cfg.stage)
        lr = {"value": value, "source": "method default", "why": why}
    per_epoch = steps_per_epoch(n_examples, t.batch_size, t.grad_accum, world_size)
    if t.epochs is not None:
        epochs = {"value": t.epochs, "source": "config", "why": "training.epochs given"}
    elif t.max_steps:
        epochs = {"value": 1.0, "source": "max_steps", "why": f"training.max_steps={t.max_steps} sets the length"}
    else:
        unit = stage_info(cfg.stage).loss_unit
        value, why = choose_epochs(n_examples, per_epoch, unit in SIZED_LOSS_UNITS, target_steps(unit))
        epochs = {"value": value, "source": "data size", "why": why}
    return {"learning_rate": lr, "epochs": epochs, "lr_scheduler": choose_schedule(cfg), "steps_per_epoch": per_epoch,
            "train_examples": n_examples}


def choose_schedule(cfg: Config) -> dict:
    """{"value", "warmup_ratio", "warmup_steps", "source", "why"}: the configured schedule, or the method's
    default_schedule on a stage in SCHEDULED_STAGES when the config names none (a schedule named in the config,
    even the schema's own cosine, is kept; so is a warmup given with the method's schedule)."""
    t, m = cfg.training, METHODS[cfg.method.name]
    given = "lr_scheduler" in t.model_fields_set
    if given or m.default_schedule is None or cfg.stage not in SCHEDULED_STAGES:
        why = "training.lr_scheduler given" if given else "the schema's default schedule"
        return {"value": t.lr_scheduler, "warmup_ratio": t.warmup_ratio, "warmup_steps": t.warmup_steps,
                "source": "config" if given else "schema", "why": why}
    warmup = t.warmup_ratio if "warmup_ratio" in t.model_fields_set else 0.0
    return {"value": m.default_schedule, "warmup_ratio": warmup, "warmup_steps": t.warmup_steps,
            "source": "method default",
            "why": f"training.lr_scheduler not given: method {cfg.method.name}'s default schedule for {cfg.stage}"}


def warmup_text(warmup_ratio: float, warmup_steps: int | None) -> str:
    """'warmup_steps 5' when given (it wins over the ratio in the loop and the TRL bridge), else 'warmup_ratio 0.03'."""
    return f"warmup_steps {warmup_steps}" if warmup_steps is not None else f"warmup_ratio {warmup_ratio:g}"


def schedule_name(lr_scheduler: str, warmup: float) -> str:
    """transformers' schedule for training.lr_scheduler with `warmup` (steps or ratio): its "constant" ignores
    num_warmup_steps, so a constant rate with a warmup is its constant_with_warmup (the loop and the TRL bridge)."""
    return "constant_with_warmup" if lr_scheduler == "constant" and warmup else lr_scheduler


def rate_and_epochs(cfg: Config) -> tuple[float, float]:
    """(learning rate, epochs) of cfg.training, open keys read as the method's default rate and one pass: for a
    component called without a stage (which applies the recipe first), so it never sees None."""
    t = cfg.training
    lr = t.learning_rate if t.learning_rate is not None else default_rate(cfg.method.name, cfg.stage)[0]
    return lr, (t.epochs if t.epochs is not None else 1.0)


def apply_recipe(cfg: Config, n_examples: int, log: Callable[[str], None] = print, world_size: int = 1) -> dict:
    """Fill the open keys of cfg.training (learning_rate, epochs) in place, log what was chosen and why, and
    return the recipe block for metrics.json. The resolved values are what config.yaml saves, so a resumed run
    and a rerun of that file use the same recipe."""
    recipe = choose(cfg, n_examples, world_size)
    cfg.training.learning_rate = recipe["learning_rate"]["value"]
    cfg.training.epochs = recipe["epochs"]["value"]
    schedule = recipe["lr_scheduler"]
    if schedule["source"] == "method default":
        cfg.training.lr_scheduler, cfg.training.warmup_ratio = schedule["value"], schedule["warmup_ratio"]
        warmup = warmup_text(schedule["warmup_ratio"], schedule["warmup_steps"]).replace(" ", "=")
        log(f"recipe: training.lr_scheduler={schedule['value']}, {warmup} ({schedule['why']})")
    for key in ("learning_rate", "epochs"):
        part = recipe[key]
        if part["source"] != "config":
            log(f"recipe: training.{key}={part['value']:g} ({part['why']})")
    return recipe
