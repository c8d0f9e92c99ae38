"""The recipe rule (train/recipe.py, issue 20 items 2 and 5): a learning rate left open is the method's own
default; epochs left open give a small data set ~TARGET_STEPS optimizer steps (at most MAX_EPOCHS passes) and a
large corpus one pass; explicit keys win; preference / RL stages keep one pass."""

import pytest

from tuneforge.config.schema import TrainingConfig
from tuneforge.methods import METHODS
from tuneforge.train.recipe import (
    MAX_EPOCHS,
    TARGET_STEPS,
    apply_recipe,
    choose,
    choose_epochs,
    default_rate,
    steps_per_epoch,
)


def test_schema_leaves_rate_and_epochs_open():
    t = TrainingConfig()
    assert t.learning_rate is None and t.epochs is None


def test_steps_per_epoch_counts_optimizer_steps():
    assert steps_per_epoch(64, 8, 1) == 8
    assert steps_per_epoch(65, 8, 1) == 9
    assert steps_per_epoch(64, 4, 2, world_size=2) == 4
    assert steps_per_epoch(3, 8, 1) == 1


@pytest.mark.parametrize("rows, batch, want", [
    (64, 8, 19),  # the 64-row fact set: 8 steps a pass -> 19 passes, 152 steps
    (300, 8, 4),  # a few hundred rows: 38 steps a pass -> 4 passes
    (400, 8, 3),  # the 400-row classification set: 50 steps a pass -> 3 passes
    (1200, 8, 1),  # >= TARGET_STEPS a pass: one pass
    (100_000, 8, 1),  # a large corpus: one pass
    (10, 8, MAX_EPOCHS),  # tiny: capped
])
def test_epochs_fit_the_data(rows, batch, want):
    per_epoch = steps_per_epoch(rows, batch, 1)
    epochs, why = choose_epochs(rows, per_epoch, sized=True)
    assert epochs == want
    assert f"{rows} examples" in why
    if want > 1:
        assert want * per_epoch >= TARGET_STEPS or want == MAX_EPOCHS
        assert (want - 1) * per_epoch < TARGET_STEPS


def test_unsized_stages_keep_one_pass():
    assert choose_epochs(64, 8, sized=False)[0] == 1.0


def test_open_keys_are_chosen_and_said(make_config):
    cfg = make_config(method={"name": "full"}, training__max_steps=None, training__learning_rate=None,
                      training__batch_size=8)
    lines: list[str] = []
    recipe = apply_recipe(cfg, 64, lines.append)
    assert cfg.training.learning_rate == METHODS["full"].default_lr and cfg.training.epochs == 19.0
    assert recipe["learning_rate"] == {"value": METHODS["full"].default_lr, "source": "method default",
                                       "why": "training.learning_rate not given: method full's default rate"}
    assert recipe["epochs"]["source"] == "data size" and recipe["steps_per_epoch"] == 8
    assert any("training.learning_rate=5e-05" in x for x in lines) and any("training.epochs=19" in x for x in lines)


def test_explicit_keys_win(make_config):
    cfg = make_config(training__max_steps=None, training__learning_rate=1e-3, training__epochs=2)
    lines: list[str] = []
    recipe = apply_recipe(cfg, 64, lines.append)
    assert (cfg.training.learning_rate, cfg.training.epochs) == (1e-3, 2)
    assert recipe["learning_rate"]["source"] == recipe["epochs"]["source"] == "config" and lines == []
    steps = choose(make_config(training__max_steps=30, training__learning_rate=None), 10_000)
    assert steps["epochs"]["source"] == "max_steps" and steps["learning_rate"]["value"] == METHODS["lora"].default_lr


def test_preference_stage_keeps_one_pass(make_config):
    cfg = make_config(stage="dpo", training__max_steps=None)
    assert choose(cfg, 64)["epochs"]["value"] == 1.0


@pytest.mark.parametrize("stage, want", [("sft", 2e-3), ("pretrain", 2e-3), ("classify", 2e-3), ("dpo", 2e-4),
                                         ("reward", 2e-4), ("grpo", 2e-4), ("kto", 2e-4)])
def test_lora_open_rate_depends_on_the_stage_kind(stage, want):
    """LoRA's open rate is the defaults study's 2e-3 on the supervised stages it measured and stays 2e-4 on the
    preference / RL / reward stages, which it did not; a method without pairs_lr uses one rate everywhere."""
    assert default_rate("lora", stage)[0] == want and default_rate("qlora", stage)[0] == want
    assert default_rate("full", stage)[0] == METHODS["full"].default_lr
    assert ("pairs/prompts" in default_rate("lora", stage)[1]) == (want == 2e-4)
    supervised = want == 2e-3  # IA3 and freeze: the methods study's new rates where measured, the old ones elsewhere
    assert default_rate("ia3", stage)[0] == (1e-2 if supervised else 3e-3)
    assert default_rate("freeze", stage)[0] == (3e-4 if supervised else 1e-4)
    if stage in ("sft", "classify"):  # prompt tuning runs there (not on the preference / RL stages): 1e-1 since
        assert default_rate("prompt", stage)[0] == 1e-1  # session 18 (docs/defaults-methods.md)


def test_classification_is_sized_to_more_steps(make_config):
    """A classifier's new head needs ~900 steps (docs/defaults.md: 150 left one of three labels unlearned)."""
    from tuneforge.train.recipe import TARGET_STEPS_BY_UNIT, target_steps

    assert target_steps("samples") == TARGET_STEPS_BY_UNIT["samples"] == 900
    assert target_steps("supervised_tokens") == TARGET_STEPS
    cls = choose(make_config(stage="classify", training__max_steps=None, training__batch_size=8), 400)
    assert cls["epochs"]["value"] == 18.0 and "target 900" in cls["epochs"]["why"]  # 50 steps a pass
    sft = choose(make_config(training__max_steps=None, training__batch_size=8), 400)
    assert sft["epochs"]["value"] == 3.0 and "target 150" in sft["epochs"]["why"]
    big = choose(make_config(stage="classify", training__max_steps=None, training__batch_size=8), 8000)
    assert big["epochs"]["value"] == 1.0  # 1000 steps a pass: one pass


def _open_schedule(make_config, **overrides):
    """make_config's run with training.lr_scheduler and warmup_ratio left out of the config (as a user who names
    neither), other keys as given."""
    from tuneforge.config.schema import Config

    raw = make_config(**overrides).model_dump(exclude_unset=True)
    raw["training"] = {k: v for k, v in raw["training"].items() if k not in ("lr_scheduler", "warmup_ratio")}
    return Config.model_validate(raw)


def test_lora_without_a_schedule_trains_at_a_constant_rate_and_says_why(make_config):
    cfg = _open_schedule(make_config)
    assert cfg.training.lr_scheduler == "cosine" and cfg.training.warmup_ratio == 0.03  # the schema's, unset
    lines: list[str] = []
    recipe = apply_recipe(cfg, 64, lines.append)
    assert (cfg.training.lr_scheduler, cfg.training.warmup_ratio) == ("constant", 0.0)
    assert recipe["lr_scheduler"] == {"value": "constant", "warmup_ratio": 0.0, "warmup_steps": None,
                                      "source": "method default",
                                      "why": "training.lr_scheduler not given: method lora's default schedule for sft"}
    assert any(x.startswith("recipe: training.lr_scheduler=constant, warmup_ratio=0") for x in lines)
    again = choose(cfg, 64)["lr_scheduler"]  # config.yaml saves the chosen schedule: a rerun keeps it
    assert (again["value"], again["source"]) == ("constant", "config")


def test_a_named_schedule_or_warmup_wins_and_the_preference_stages_keep_the_schemas(make_config):
    from tuneforge.config.schema import Config

    raw = _open_schedule(make_config).model_dump(exclude_unset=True)
    named = Config.model_validate({**raw, "training": {**raw["training"], "lr_scheduler": "cosine"}})
    assert choose(named, 64)["lr_scheduler"] == {"value": "cosine", "warmup_ratio": 0.03, "warmup_steps": None,
                                                 "source": "config", "why": "training.lr_scheduler given"}
    warm = Config.model_validate({**raw, "training": {**raw["training"], "warmup_ratio": 0.1}})
    assert choose(warm, 64)["lr_scheduler"]["warmup_ratio"] == 0.1
    assert choose(warm, 64)["lr_scheduler"]["value"] == "constant"
    steps = Config.model_validate({**raw, "training": {**raw["training"], "warmup_steps": 5}})
    lines: list[str] = []  # warmup_steps wins over the ratio in training: the log and the report say steps
    assert apply_recipe(steps, 64, lines.append)["lr_scheduler"]["warmup_steps"] == 5
    assert any(x.startswith("recipe: training.lr_scheduler=constant, warmup_steps=5 (") for x in lines), lines
    full = _open_schedule(make_config, method={"name": "full"})  # measured too (docs/defaults-full-schedule.md)
    assert choose(full, 64)["lr_scheduler"]["source"] == "method default"
    assert choose(full, 64)["lr_scheduler"]["value"] == "constant"
    for name in ("freeze", "ia3", "prefix", "prompt"):  # measured too (docs/defaults-methods.md)
        other = choose(_open_schedule(make_config, method={"name": name}), 64)["lr_scheduler"]
        assert (other["value"], other["source"]) == ("constant", "method default"), name
    adapter = choose(_open_schedule(make_config, method={"name": "adapter"}), 64)["lr_scheduler"]  # cosine won on
    assert (adapter["value"], adapter["warmup_ratio"], adapter["source"]) == ("cosine", 0.03, "schema")  # quickstart
    pretrain = Config.model_validate({**raw, "stage": "pretrain"})
    assert choose(pretrain, 64)["lr_scheduler"]["value"] == "constant"
    dpo = Config.model_validate({**raw, "stage": "dpo"})  # TRL's schedules, not measured: the schema's
    assert choose(dpo, 64)["lr_scheduler"] == {"value": "cosine", "warmup_ratio": 0.03, "warmup_steps": None,
                                               "source": "schema", "why": "the schema's default schedule"}
    assert METHODS["lora"].default_schedule == METHODS["qlora"].default_schedule == "constant"
    assert {n: m.default_schedule for n, m in METHODS.items() if m.default_schedule != "constant"} == {"adapter": None}


@pytest.mark.parametrize("warmup, want", [(0, [1e-2] * 6), (3, [0.0, 1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2, 1e-2])])
def test_a_constant_rate_keeps_its_warmup(make_config, warmup, want):
    """transformers' "constant" schedule drops num_warmup_steps; the loop's optimizer must not."""
    import torch

    from tuneforge.train.steps import make_optimizer

    cfg = make_config(training__lr_scheduler="constant", training__warmup_steps=warmup, training__learning_rate=1e-2)
    optimizer, scheduler = make_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg, 6)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(want)


def test_the_reports_recipe_row_names_the_warmup_the_run_used():
    from tuneforge.report.write import recipe_lines

    schedule = {"value": "constant", "warmup_ratio": 0.03, "source": "config", "why": "training.lr_scheduler given"}
    assert "| training.lr_scheduler | constant (warmup_steps 5) |" in "\n".join(
        recipe_lines({"lr_scheduler": {**schedule, "warmup_steps": 5}}))
    for old in (schedule, {**schedule, "warmup_steps": None}):  # metrics.json written before warmup_steps was kept
        row = "| training.lr_scheduler | constant (warmup_ratio 0.03) |"
        assert row in "\n".join(recipe_lines({"lr_scheduler": old}))
