"""train/hf_bridge.py without training (the DPO tests train through it): our config mapped onto TRL's config
(its different defaults overridden), resume picks the newest complete checkpoint and refuses one saved by a
different run, and the per-step history read from the trainer's log. Skipping non-finite steps and stopping on
SIGINT are tested with real training in test_dpo.py."""

import json
from types import SimpleNamespace

import pytest

from tuneforge.errors import ConfigError
from tuneforge.train import hf_bridge
from tuneforge.train.guards import run_guards


def test_trainer_args_override_trl_defaults(make_config, tmp_path):
    from trl import DPOConfig

    cfg = make_config(stage="dpo", training__lr_scheduler="constant", training__warmup_steps=3,
                      training__max_grad_norm=None, training__save_steps=None, training__progress=False)
    args = hf_bridge.to_trainer_args(cfg, tmp_path, "fp32")
    assert args["lr_scheduler_type"] == "constant_with_warmup" and args["warmup_steps"] == 3
    assert args["max_grad_norm"] == 0.0 and args["save_strategy"] == "no" and args["report_to"] == []
    dpo = DPOConfig(**args)  # TRL defaults: bf16 on, gradient checkpointing on, logging every 10 steps
    assert not dpo.bf16 and not dpo.gradient_checkpointing and dpo.logging_steps == 1 and dpo.disable_tqdm
    assert dpo.output_dir == str(tmp_path / "checkpoints") and dpo.max_steps == 30 and dpo.learning_rate == 3e-2
    assert DPOConfig(**hf_bridge.to_trainer_args(cfg, tmp_path, "bf16")).bf16


def fake_checkpoint(root, step: int, complete: bool = True, guards: dict | None = None):
    path = root / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if guards:
        (path / hf_bridge.GUARDS).write_text(json.dumps(guards))
    if complete:
        (path / hf_bridge.MARKER).write_text("ok\n")
    return path


def test_resume_takes_the_newest_complete_checkpoint_of_the_same_run(make_config, tmp_path):
    out = tmp_path / "run"
    cfg = make_config(stage="dpo", resume="auto")
    assert hf_bridge.resume_checkpoint(cfg, out) is None  # nothing saved yet: start from step 0
    assert hf_bridge.resume_checkpoint(make_config(stage="dpo"), out) is None  # resume not asked
    good = fake_checkpoint(out, 2, guards=run_guards(cfg))
    half = fake_checkpoint(out, 10, complete=False, guards=run_guards(cfg))  # killed while saving
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint"):
        assert hf_bridge.resume_checkpoint(cfg, out) == str(good)
    with pytest.raises(ConfigError, match="key 'resume'.*not a complete checkpoint"):
        hf_bridge.resume_checkpoint(make_config(stage="dpo", resume=str(half)), out)

    other = make_config(stage="dpo", resume=str(good), seed=7)
    with pytest.raises(ConfigError, match="seed changed: 0 -> 7.*resume_allow_changes"):
        hf_bridge.resume_checkpoint(other, out)
    allowed = make_config(stage="dpo", resume=str(good), seed=7, resume_allow_changes=["seed"])
    assert hf_bridge.resume_checkpoint(allowed, out) == str(good)
    lr = make_config(stage="dpo", resume=str(good), training__learning_rate=1e-3,
                     resume_allow_changes=["learning_rate"])
    with pytest.raises(ConfigError, match="learning_rate cannot be applied"):
        hf_bridge.resume_checkpoint(lr, out)


def test_a_checkpoint_damaged_after_its_marker_is_skipped(make_config, tmp_path):
    """The marker lists every file's size and sha256 (as tuneforge's own checkpoints): a file truncated or
    changed after the save is detected, auto-resume falls back, an explicit path is refused."""
    from tuneforge.train.checkpoint import write_manifest

    out = tmp_path / "run"
    cfg = make_config(stage="dpo", resume="auto")
    older, newer = (fake_checkpoint(out, step, complete=False, guards=run_guards(cfg)) for step in (2, 4))
    for path in (older, newer):
        (path / "model.safetensors").write_bytes(b"x" * 100)
        write_manifest(path, ["trainer_state.json", hf_bridge.GUARDS, "model.safetensors"])
    assert hf_bridge.resume_checkpoint(cfg, out) == str(newer)
    (newer / "model.safetensors").write_bytes(b"x" * 50)  # torn after the marker was written
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint"):
        assert hf_bridge.resume_checkpoint(cfg, out) == str(older)
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        hf_bridge.resume_checkpoint(make_config(stage="dpo", resume=str(newer)), out)


def test_history_of_reads_the_training_logs():
    state = SimpleNamespace(log_history=[
        {"loss": 0.69, "grad_norm": 0.5, "learning_rate": 0.01, "rewards/accuracies": 0.0, "epoch": 0.1, "step": 1},
        {"eval_loss": 0.6, "step": 1},
        {"loss": float("nan"), "learning_rate": 0.01, "skipped_nonfinite": True, "step": 2},
        {"train_runtime": 1.0, "train_loss": 0.6, "step": 2},
    ])
    history = hf_bridge.history_of(SimpleNamespace(state=state))
    assert [h["step"] for h in history] == [1, 2]
    assert history[0] == {"step": 1, "loss": 0.69, "lr": 0.01, "grad_norm": 0.5, "rewards/accuracies": 0.0,
                          "epoch": 0.1}
    assert history[1]["skipped_nonfinite"] and history[1]["grad_norm"] is None
