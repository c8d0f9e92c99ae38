"""The pieces of one training run that the loop (tuneforge.train.loop) and ppo share: the signal flag, the
step plan, the progress bar, the optimizer, resume, this rank's batches of a step, forward/backward over them,
the checkpoint a signal stops with and the non-finite step guard.

    batches, n_real = step_batches(objective, examples, micro, even=fsdp)   # even: equal passes on every rank
    step_loss, signum = forward_backward(objective, model, batches, n_real, n_sup, precision, stop_signal)
"""

from __future__ import annotations

import json
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tuneforge.config.schema import Config
from tuneforge.device import model_device, move
from tuneforge.errors import NonFiniteLoss
from tuneforge.fsutil import write_text_atomic
from tuneforge.methods.peft_import import bitsandbytes_hidden
from tuneforge.train import checkpoint as ckpt
from tuneforge.train import distributed as ddp
from tuneforge.train import guards as guards_mod
from tuneforge.train import wall
from tuneforge.train.precision import autocast
from tuneforge.train.recipe import schedule_name


@dataclass(frozen=True)
class Objective:
    """What the loop trains. `collate` turns one micro-batch of examples into model inputs (objects with
    `n_tokens` and `n_supervised`); `loss_sum` is the summed loss of one of them, which the loop divides by
    the `n_supervised` of the whole optimizer step; `evaluate` scores a list of examples."""

    collate: Callable[[list], list]
    loss_sum: Callable[[torch.nn.Module, Any], torch.Tensor]
    evaluate: Callable[[torch.nn.Module, list], dict]



@contextmanager
def stop_on_signals() -> Iterator[Callable[[], int | None]]:
    """SIGINT/SIGTERM set a flag; the loop stops after the current micro-batch (abandoning a partly
    accumulated step) or step, saves a checkpoint and raises TrainingInterrupted (exit 128 + signal).
    A second signal gets the default behaviour (hard stop: SIGTERM kills, SIGINT raises KeyboardInterrupt).
    Python runs handlers between bytecodes: during one long native call (a huge matmul) both wait for it."""
    received: list[int] = []
    previous = {}

    def handler(signum, _frame):  # the second signal: the hard stop itself, not whatever was installed before us
        received.append(signum)  # (a handler left by a library or an earlier run would swallow it)
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread: signals stay as they are
            pass
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def plan_steps(cfg: Config, n_examples: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    t = cfg.training
    micro = math.ceil(n_examples / t.batch_size)
    per_epoch = math.ceil(micro / t.grad_accum)
    total = t.max_steps if t.max_steps else math.ceil(t.epochs * per_epoch)
    return per_epoch, total


def progress_bar(enabled: bool, label: str = "train", unit: str = "",
                 fields: tuple[str, ...] = ("loss {task.fields[loss]:.4f}", "{task.fields[tps]:.0f} tok/s")
                 ) -> Progress:
    """On stderr: label, bar, done/total `unit`, the `fields` columns (over task.fields), elapsed time, ETA."""
    count = "{task.completed}/{task.total}" + (f" {unit}" if unit else "")
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn(count), *map(TextColumn, fields),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True),
                    disable=not enabled)


def make_optimizer(params: list, cfg: Config, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """(AdamW, training.lr_scheduler over `total_steps` optimizer steps after warmup_steps or warmup_ratio)."""
    with bitsandbytes_hidden():  # transformers.optimization imports peft (trainer_utils), peft bitsandbytes
        from transformers import get_scheduler

    t = cfg.training
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    warmup = t.warmup_steps if t.warmup_steps is not None else int(round(t.warmup_ratio * total_steps))
    return optimizer, get_scheduler(schedule_name(t.lr_scheduler, warmup), optimizer, num_warmup_steps=warmup,
                                    num_training_steps=total_steps)


def step_batches(objective: Objective, train_examples, micro: list[list[int]], even: bool = False
                 ) -> tuple[list, int]:
    """(this rank's model inputs for one optimizer step, how many of them are real): its shard of each micro-batch,
    collated. `even` (FSDP, where every forward and backward is a collective): ranks with fewer inputs than the
    busiest one get copies of one to run with weight 0. Examples are read by position (any Sequence)."""
    batches = []
    for idx in micro:
        mine = ddp.shard(idx)
        if mine:
            batches.extend(objective.collate([train_examples[i] for i in mine]))
    n_real = len(batches)
    if even:
        most = ddp.max_value(n_real)
        filler = batches[-1:] or objective.collate([train_examples[micro[0][0]]])[:1]
        batches += filler * (most - n_real)
    return batches, n_real


def resume_run(cfg: Config, ckpt_root: Path, guards: dict, model, optimizer, scheduler, log: Callable[[str], None],
            output_dir: Path, zero=None) -> tuple[str | None, ckpt.TrainState | None, list[dict]]:
    """Restore the checkpoint `cfg.resume` names (or the newest usable one) after checking that it was saved
    by the same run (model, data, seed, learning rate) or that resume_allow_changes allows the difference.
    `zero` (tuneforge.train.deepspeed_engine.Zero): its restore puts the tensors into DeepSpeed's partitions."""
    found = ckpt.find_resume(cfg.resume, ckpt_root)
    if not found:
        if ckpt_root.is_dir() and any(p.name.startswith("step-") for p in ckpt_root.iterdir()):
            warnings.warn(f"resume=auto: no usable checkpoint in {ckpt_root}; starting from step 0", stacklevel=2)
        return None, None, []
    path, loaded = found
    changes = guards_mod.check_guards(loaded, guards, cfg.resume_allow_changes, path)
    state = ckpt.restore(loaded, model, optimizer, scheduler, put=zero.restore if zero else None)
    wall.resumed(loaded["meta"].get("wall_seconds"))  # the earlier processes' seconds, for metrics.json
    if any(c["key"] == "learning_rate" for c in changes):  # allowed: the new rate takes over the schedule
        lr = cfg.training.learning_rate
        scheduler.base_lrs = [lr] * len(optimizer.param_groups)
        for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
            group["initial_lr"], group["lr"] = lr, lr * factor(scheduler.last_epoch)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    for c in changes:
        log(f"resume: {c['key']} changed since {path.name}: {c['old']} -> {c['new']} (allowed by resume_allow_changes)")
    if ddp.is_main():  # every resume on record, with what it let through
        record = {"time": time.time(), "checkpoint": str(path), "step": state.step, "changes": changes,
                  "guards_checked": bool(loaded["meta"].get("guards"))}
        old = (output_dir / "resume_log.jsonl").read_text() if (output_dir / "resume_log.jsonl").is_file() else ""
        write_text_atomic(output_dir / "resume_log.jsonl", old + json.dumps(record) + "\n")
    log(f"resumed from {path} at step {state.step}")
    return str(path), state, changes


def forward_backward(objective: Objective, model, batches: list, n_real: int, n_sup: int, precision: str,
                     stop_signal: Callable[[], int | None] | None, scaler=None,
                     backward: Callable[[torch.Tensor, bool], None] | None = None) -> tuple[float, int | None]:
    """(summed loss of the step, signal number if one arrived before the last micro-batch: the step is
    abandoned so the process stops within one micro-batch, not one whole accumulated step). Inputs past
    `n_real` are step_batches' fillers: their loss is multiplied by 0 (zero gradients, same collectives).
    Each input goes to the model's device here; `scaler` (fp16) scales the loss before backward; `backward(loss,
    last)` replaces loss.backward() (DeepSpeed's engine; `last`: the step's last micro-batch)."""
    step_loss = 0.0
    device = model_device(model)
    for i, batch in enumerate(batches):
        with autocast(precision):
            loss = objective.loss_sum(model, move(batch, device))
        if i >= n_real:
            loss = loss * 0.0
        scaled = loss / n_sup
        if backward is not None:
            backward(scaled, i == len(batches) - 1)
        else:
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        step_loss += float(loss.detach())
        if stop_signal and i < len(batches) - 1 and stop_signal():
            return step_loss, stop_signal()
    return step_loss, None


def save_on_signal(ckpt_root: Path, model, optimizer, scheduler, state: ckpt.TrainState, keep: int,
                   guards: dict) -> Path:
    """The checkpoint to stop with: the newest one if it is already at this step, else a new one."""
    existing = ckpt.list_checkpoints(ckpt_root)
    if existing and existing[-1].name == f"step-{state.step:07d}":
        return existing[-1]
    return ckpt.save_checkpoint(ckpt_root, model, optimizer, scheduler, state, keep, guards=guards)


def skip_nonfinite(state: ckpt.TrainState, step_loss: float, grad_norm: torch.Tensor, max_bad_steps: int,
                   ckpt_root: Path, step: int | None = None, unit: str = "step", counted: str = "steps") -> None:
    """A non-finite loss or gradient (the caller drops the gradients): warned, on record in state.skipped, NonFiniteLoss
    after max_bad_steps in a row. `unit` `step` says where (ppo: rollout), `counted` what bad_steps counts (updates)."""
    step = state.step if step is None else step
    state.bad_steps += 1
    state.skipped.append({"step": step, "loss": str(step_loss), "grad_norm": str(float(grad_norm))})
    warnings.warn(f"{unit} {step}: non-finite loss/gradient (loss {step_loss}, grad norm {float(grad_norm)}); "
                  f"update skipped ({state.bad_steps} in a row)", stacklevel=2)
    if state.bad_steps >= max_bad_steps:
        last = ckpt.list_checkpoints(ckpt_root)
        first = state.skipped[-state.bad_steps]["step"] if len(state.skipped) >= state.bad_steps else (
            step - state.bad_steps + 1)
        raise NonFiniteLoss(
            f"{state.bad_steps} non-finite {counted} in a row ({unit}s {first}-{step}, "
            f"training.max_bad_steps={max_bad_steps}): stopped; no non-finite weights were saved"
            + (f"; the last checkpoint is {last[-1]}" if last else "")
            + ". Lower training.learning_rate, set training.max_grad_norm or check the data, then resume=auto")
