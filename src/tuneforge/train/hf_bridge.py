"""Run a transformers / TRL Trainer (DPOTrainer, GRPOTrainer) under tuneforge's run contract: our config
mapped to TrainingArguments fields, SIGINT/SIGTERM -> checkpoint + TrainingInterrupted, non-finite steps
skipped (never applied, never saved, the learning-rate schedule not advanced) and NonFiniteLoss after
training.max_bad_steps in a row, checkpoints marked complete so resume=auto never picks a half-written one,
scalars to TensorBoard / MLflow through tuneforge's metric log, and the per-step history read back from the
trainer.

    guard = GuardCallback(cfg.training.max_bad_steps, guards=run_guards(cfg))
    trainer = DPOTrainer(model, args=DPOConfig(**to_trainer_args(cfg, out, precision), beta=...),
                         callbacks=[guard, MetricLogCallback(cfg, out)], ...)
    try:
        trainer.train(resume_from_checkpoint=resume_checkpoint(cfg, out))
    finally:
        guard.restore_signals()       # an exception inside train() skips on_train_end
    guard.raise_if_stopped()          # TrainingInterrupted (exit 128+signum) / NonFiniteLoss (exit 2)
    history = history_of(trainer)
"""

from __future__ import annotations

import json
import re
import signal
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback

from tuneforge.config.schema import Config
from tuneforge.device import resolve_device
from tuneforge.errors import ConfigError, NonFiniteLoss, TrainingInterrupted
from tuneforge.train import wall
from tuneforge.train.checkpoint import MARKER, check_manifest, write_manifest
from tuneforge.train.guards import check_guards, run_guards
from tuneforge.train.metric_log import MetricLog, open_metric_log
from tuneforge.train.recipe import rate_and_epochs, schedule_name

GUARDS = "tuneforge_guards.json"  # what the run was (train.guards.run_guards), checked on resume
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def to_trainer_args(cfg: Config, out: Path, precision: str) -> dict:
    """Keyword arguments shared by trl's DPOConfig / GRPOConfig (transformers TrainingArguments fields).
    TRL's own defaults differ from tuneforge's (bf16 on, gradient checkpointing on, lr 1e-6), so every
    field that matters is set here."""
    t = cfg.training
    learning_rate, epochs = rate_and_epochs(cfg)  # the stage has applied the recipe; a direct caller may not
    warmup = t.warmup_steps if t.warmup_steps is not None else t.warmup_ratio  # a float < 1 is a ratio (5.x)
    scheduler = schedule_name(t.lr_scheduler, warmup)
    return {
        "output_dir": str(out / "checkpoints"),
        "max_steps": t.max_steps or -1,
        "num_train_epochs": epochs,
        "learning_rate": learning_rate,
        "lr_scheduler_type": scheduler,
        "warmup_steps": warmup,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm or 0.0,  # 0 disables clipping
        "bf16": precision == "bf16",  # autocast through accelerate, like train.precision.autocast
        "fp16": precision == "fp16",  # CUDA only (resolve_precision); the Trainer adds its gradient scaler
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "logging_strategy": "steps",
        "logging_steps": t.logging_steps,
        # keep HF's filter: without it one NaN poisons the running loss sum of every later log; GuardCallback
        # marks the skipped steps in the log instead
        "logging_nan_inf_filter": True,
        "save_strategy": "steps" if t.save_steps else "no",  # GuardCallback still saves on a signal
        "save_steps": t.save_steps or 500,
        "save_total_limit": t.save_total_limit,
        "eval_strategy": "no",  # stages evaluate with their own metric functions
        # transformers 5.23's name for gradient checkpointing; the old name (TRL defaults it to True) mirrors it
        "activation_checkpointing": t.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False},
        "disable_tqdm": not t.progress,
        "report_to": [],  # MetricLogCallback writes tuneforge's sinks (output_dir/tensorboard, mlflow)
        "use_cpu": resolve_device(t.device).type == "cpu",  # the Trainer takes cuda:LOCAL_RANK / mps itself
        "dataloader_num_workers": 0,  # 2-core CPUs: worker processes only compete with the math threads
        "dataloader_pin_memory": False,
        "dataloader_persistent_workers": False,
    }


class GuardCallback(TrainerCallback):
    """SIGINT/SIGTERM: the current step finishes, a checkpoint is saved, training stops. A non-finite loss or
    gradient: every gradient is dropped before the optimizer step (AdamW skips parameters without a
    gradient, so weights and moments stay as they were); after `max_bad_steps` in a row training stops.
    The stage then calls `raise_if_stopped()`. A second signal falls through to the default handler.
    Order in `callbacks=`: after callbacks that work in on_step_end (an evaluation: a signal that arrives
    during it still stops this step), before MetricLogCallback (which then logs a skipped step as NaN)."""

    def __init__(self, max_bad_steps: int = 5, guards: dict | None = None) -> None:
        self.max_bad_steps = max_bad_steps
        self.guards = guards  # run_guards(cfg): saved with each checkpoint, so resume can refuse another run
        self.bad_steps = 0
        self.skipped: list[int] = []  # optimizer steps whose update was dropped
        self.signum: int | None = None
        self.checkpoint: str | None = None
        self.nonfinite_stop = False
        self._previous: dict[int, object] = {}
        self._schedule: tuple[dict, list[float]] | None = None  # the LR schedule before a skipped step

    def _handler(self, signum, _frame) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def on_train_begin(self, args, state, control, **kwargs):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread: signals stay as they are
                pass

    def on_train_end(self, args, state, control, **kwargs):
        self.restore_signals()

    def restore_signals(self) -> None:
        """The handlers found at on_train_begin back. on_train_end does it when training ends; the caller does it
        too, in a `finally` around trainer.train(): an exception inside train() skips on_train_end and would
        leave this handler behind, and that handler turns the next Ctrl-C in the process into a mere flag."""
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if all(bool(torch.isfinite(p.grad).all()) for p in params):
            self.bad_steps = 0
            return
        for p in params:  # after clipping a NaN norm spreads to every gradient; drop them all
            p.grad = None
        # the Trainer steps the schedule after every optimizer step (transformers 5.25 checks only accelerate's
        # fp16-overflow flag): put it back in on_step_end, so a skipped step does not use up the schedule,
        # as in tuneforge's own loop
        if lr_scheduler is not None:
            self._schedule = (lr_scheduler.state_dict(), [g["lr"] for g in optimizer.param_groups])
        step = state.global_step + 1
        self.bad_steps += 1
        self.skipped.append(step)
        warnings.warn(f"step {step}: non-finite loss/gradient; update skipped", stacklevel=1)
        if self.bad_steps >= self.max_bad_steps:
            self.nonfinite_stop = True
            control.should_training_stop = True
            control.should_save = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        """A skipped step is logged as NaN (HF's filter logged a running average), in the logs the other
        callbacks see and in state.log_history (a copy of them, plus "step")."""
        if logs is not None and "loss" in logs and state.global_step in self.skipped:
            for entry in (logs, state.log_history[-1]):
                entry.update(loss=float("nan"), skipped_nonfinite=True)

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if self._schedule is not None and lr_scheduler is not None:
            saved, lrs = self._schedule
            lr_scheduler.load_state_dict(saved)
            for group, lr in zip(optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
        self._schedule = None
        if self.signum is not None and not self.nonfinite_stop:
            control.should_save = True
            control.should_training_stop = True
        if self.nonfinite_stop:
            control.should_save = False

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if path.is_dir() and args.should_save:
            if self.guards:
                (path / GUARDS).write_text(json.dumps(self.guards))
            wall.write(path)  # each process's seconds up to this save
            # the marker last, with every file's size and sha256: complete once it exists, damage detected
            names = [str(f.relative_to(path)) for f in sorted(path.rglob("*")) if f.is_file() and f.name != MARKER]
            write_manifest(path, names)
            self.checkpoint = str(path)

    def raise_if_stopped(self) -> None:
        if self.nonfinite_stop:
            raise NonFiniteLoss(f"{self.bad_steps} non-finite steps in a row (training.max_bad_steps); "
                                f"stopped at step {self.skipped[-1]}, nothing saved")
        if self.signum is not None:
            raise TrainingInterrupted(self.signum, self.checkpoint)


class MetricLogCallback(TrainerCallback):
    """Trainer logs -> tuneforge's metric log (TensorBoard under output_dir/tensorboard, MLflow if asked),
    with the tag names of tuneforge's own loop (train/loss, train/lr, train/grad_norm, ...)."""

    RENAME = {"learning_rate": "lr"}

    def __init__(self, cfg: Config, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.writer: MetricLog | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.writer = open_metric_log(self.cfg, self.out, state.global_step + 1 if state.global_step else None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.writer is None or not logs:
            return
        for key, value in logs.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                name = key[5:] if key.startswith("eval_") else self.RENAME.get(key, key)
                self.writer.add_scalar(f"{'eval' if key.startswith('eval_') else 'train'}/{name}", value,
                                       state.global_step)
        if "eval_loss" in logs:  # live eval_log.jsonl (the studio's eval curve)
            self.writer.add_eval(state.global_step, {k[5:]: v for k, v in logs.items() if k.startswith("eval_")})
        if "loss" in logs and "train_runtime" not in logs:  # live train_log.jsonl (studio, tail -f); history_of
            self.writer.add_step([], step=state.global_step, loss=logs["loss"],  # rewrites it whole at the end
                                 lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"))

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _complete(path: Path) -> bool:
    """The marker, every file as it lists them, and a readable trainer state."""
    try:
        check_manifest(path, required=("trainer_state.json",))
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def _find(cfg: Config, out: Path) -> Path | None:
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if not _complete(path):
            raise ConfigError(f"key 'resume': {cfg.resume} is not a complete checkpoint (no {MARKER} marker or no "
                              "readable trainer_state.json); resume=auto takes the newest complete one")
        return path
    root = out / "checkpoints"
    found = sorted((int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else [])
                   if p.is_dir() and (m := _CHECKPOINT.match(p.name)))
    for _, path in reversed(found):
        if _complete(path):
            return path
        warnings.warn(f"skipping incomplete checkpoint {path}; trying the previous one", stacklevel=3)
    return None


def resume_checkpoint(cfg: Config, out: Path) -> str | None:
    """cfg.resume: None -> None; "auto" -> the newest complete checkpoint under out/checkpoints (None when
    there is none; incomplete ones are skipped with a warning); a path -> that checkpoint or an error. A
    checkpoint saved by a different run (model, data, seed, learning rate) is refused unless
    resume_allow_changes names the change, as in tuneforge's own loop."""
    if not cfg.resume:
        return None
    path = _find(cfg, out)
    if path is None:
        return None
    saved = json.loads((path / GUARDS).read_text()) if (path / GUARDS).is_file() else None
    wall.resumed(wall.read(path))  # the earlier processes' seconds, for metrics.json
    changes = check_guards({"meta": {"guards": saved}}, run_guards(cfg), cfg.resume_allow_changes, path)
    if any(c["key"] == "learning_rate" for c in changes):
        raise ConfigError("key 'resume_allow_changes': a changed learning_rate cannot be applied on resume here (the "
                          "Trainer restores the checkpoint's optimizer and schedule); keep the learning rate")
    return str(path)


def history_of(trainer) -> list[dict]:
    """Per-step training logs: {"step", "loss", "lr", "grad_norm", ...the trainer's other scalars}."""
    history = []
    for entry in trainer.state.log_history:
        if "loss" not in entry or "train_runtime" in entry:
            continue
        row = {"step": entry["step"], "loss": entry["loss"], "lr": entry.get("learning_rate"),
               "grad_norm": entry.get("grad_norm")}
        row |= {k: v for k, v in entry.items() if k not in ("step", "loss", "learning_rate", "grad_norm")}
        history.append(row)
    return history
