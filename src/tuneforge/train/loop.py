"""The training loop: padding-free micro-batches, gradient accumulation normalised by supervised tokens,
bf16 autocast, LR schedule, non-finite steps skipped, atomic checkpoints, exact resume guarded against
a changed run (tuneforge.train.checkpoint, .guards), and a clean stop on SIGINT/SIGTERM. Small on purpose:
every line is something the run contract promises (docs/reliability.md lists the tests that prove them).

    result = train(model, train_examples, eval_examples, cfg, output_dir, precision)
    result = train(..., objective=Objective(collate, loss_sum, evaluate))   # another stage's loss
    result = train(..., on_eval=lambda step, result: ...)   # sees every periodic evaluation (hpo pruning)
Under torchrun / accelerate launch (WORLD_SIZE > 1) each step's examples are split across ranks and the
gradients summed (tuneforge.train.distributed); rank 0 alone logs, evaluates and saves.
"""

from __future__ import annotations

import json
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_scheduler

from tuneforge.config.schema import Config
from tuneforge.data.batching import collate, epoch_microbatches
from tuneforge.data.templates import Example
from tuneforge.errors import NonFiniteLoss, TrainingInterrupted
from tuneforge.fsutil import write_text_atomic
from tuneforge.train import checkpoint as ckpt
from tuneforge.train import distributed as ddp
from tuneforge.train import guards as guards_mod
from tuneforge.train.loss import evaluate_loss, loss_sum
from tuneforge.train.metric_log import open_metric_log
from tuneforge.train.precision import autocast


@dataclass(frozen=True)
class Objective:
    """What the loop trains. `collate` turns one micro-batch of examples into model inputs (objects with
    `n_tokens` and `n_supervised`); `loss_sum` is the summed loss of one of them, which the loop divides by
    the `n_supervised` of the whole optimizer step; `evaluate` scores a list of examples."""

    collate: Callable[[list], list]
    loss_sum: Callable[[torch.nn.Module, Any], torch.Tensor]
    evaluate: Callable[[torch.nn.Module, list], dict]


def lm_objective(cfg: Config, precision: str, packed: bool) -> Objective:
    """Next-token loss on supervised positions, packed padding-free unless the method needs padded rows."""
    t = cfg.training
    return Objective(
        collate=lambda examples: collate(examples, packed, t.pack_length),
        loss_sum=loss_sum,
        evaluate=lambda model, examples: evaluate_loss(model, examples, t.batch_size, precision, packed, t.pack_length),
    )


@dataclass
class TrainResult:
    steps: int
    history: list[dict]
    evals: list[dict]
    tokens_seen: int
    supervised_seen: int
    train_seconds: float
    resumed_from: str | None
    resume_changes: list[dict] = field(default_factory=list)  # changes resume_allow_changes let through
    skipped_steps: list[dict] = field(default_factory=list)  # non-finite steps, update skipped


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], int | None]]:
    """SIGINT/SIGTERM set a flag; the loop stops after the current micro-batch (abandoning a partly
    accumulated step) or step, saves a checkpoint and raises TrainingInterrupted (exit 128 + signal).
    A second signal gets the default behaviour (hard stop: SIGTERM kills, SIGINT raises KeyboardInterrupt).
    Python runs handlers between bytecodes: during one long native call (a huge matmul) both wait for it."""
    received: list[int] = []
    previous = {}

    def handler(signum, _frame):
        received.append(signum)
        signal.signal(signum, previous[signum])

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
    t = cfg.training
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    warmup = t.warmup_steps if t.warmup_steps is not None else int(round(t.warmup_ratio * total_steps))
    return optimizer, get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def _step_batches(objective: Objective, train_examples: list[Example], micro: list[list[int]]) -> list:
    """This rank's model inputs for one optimizer step: its shard of each micro-batch, collated."""
    batches = []
    for idx in micro:
        mine = ddp.shard(idx)
        if mine:
            batches.extend(objective.collate([train_examples[i] for i in mine]))
    return batches


def resume_run(cfg: Config, ckpt_root: Path, guards: dict, model, optimizer, scheduler, log: Callable[[str], None],
            output_dir: Path) -> tuple[str | None, ckpt.TrainState | None, list[dict]]:
    """Restore the checkpoint `cfg.resume` names (or the newest usable one) after checking that it was saved
    by the same run (model, data, seed, learning rate) or that resume_allow_changes allows the difference."""
    found = ckpt.find_resume(cfg.resume, ckpt_root)
    if not found:
        if ckpt_root.is_dir() and any(p.name.startswith("step-") for p in ckpt_root.iterdir()):
            warnings.warn(f"resume=auto: no usable checkpoint in {ckpt_root}; starting from step 0", stacklevel=2)
        return None, None, []
    path, loaded = found
    changes = guards_mod.check_guards(loaded, guards, cfg.resume_allow_changes, path)
    state = ckpt.restore(loaded, model, optimizer, scheduler)
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


def _forward_backward(objective: Objective, model, batches: list, n_sup: int, precision: str,
                      stop_signal: Callable[[], int | None] | None) -> tuple[float, int | None]:
    """(summed loss of the step, signal number if one arrived before the last micro-batch: the step is
    abandoned so the process stops within one micro-batch, not one whole accumulated step)."""
    step_loss = 0.0
    for i, batch in enumerate(batches):
        with autocast(precision):
            loss = objective.loss_sum(model, batch)
        (loss / n_sup).backward()
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


def train(model, train_examples: list[Example], eval_examples: list[Example], cfg: Config, output_dir: Path,
          precision: str, log: Callable[[str], None] = print, packed: bool = True,
          objective: Objective | None = None, on_eval: Callable[[int, dict], None] | None = None) -> TrainResult:
    """`on_eval(step, result)` is called after each periodic evaluation (on rank 0); an exception it raises
    (e.g. optuna.TrialPruned) stops training and propagates."""
    t = cfg.training
    objective = objective or lm_objective(cfg, precision, packed)
    per_epoch, total_steps = plan_steps(cfg, len(train_examples))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, cfg, total_steps)
    ckpt_root = output_dir / "checkpoints"
    guards = guards_mod.run_guards(cfg)

    state = ckpt.TrainState(step=0, bad_steps=0, history=[], tokens_seen=0, train_seconds=0.0)
    resumed_from, changes = None, []
    if cfg.resume:
        resumed_from, restored, changes = resume_run(cfg, ckpt_root, guards, model, optimizer, scheduler, log,
                                                     output_dir)
        state = restored or state

    supervised_seen = sum(h["supervised_tokens"] for h in state.history)
    model.train()
    main = ddp.is_main()
    writer = open_metric_log(cfg, output_dir, state.step + 1 if resumed_from else None)
    with stop_on_signals() as stop_signal, progress_bar(t.progress and main) as bar, closing(writer):
        task = bar.add_task("train", total=total_steps, completed=state.step, loss=float("nan"), tps=0.0)
        while state.step < total_steps:
            started, rng_at_start = time.perf_counter(), torch.get_rng_state()
            epoch, k = divmod(state.step, per_epoch)
            micro = epoch_microbatches(len(train_examples), t.batch_size, cfg.seed, epoch)
            batches = _step_batches(objective, train_examples, micro[k * t.grad_accum : (k + 1) * t.grad_accum])
            # normalise by the supervised tokens of the whole (global) step, whatever rank holds them
            n_sup, n_tok = (int(v) for v in ddp.sum_values(sum(b.n_supervised for b in batches),
                                                            sum(b.n_tokens for b in batches)))
            # one process may abandon a step between micro-batches; ranks must agree, so they finish it
            step_loss, signum = _forward_backward(objective, model, batches, n_sup, precision,
                                                  stop_signal if ddp.world_size() == 1 else None)
            if signum:
                optimizer.zero_grad(set_to_none=True)
                torch.set_rng_state(rng_at_start)  # resume replays this step exactly
                path = save_on_signal(ckpt_root, model, optimizer, scheduler, state, t.save_total_limit, guards)
                raise TrainingInterrupted(signum, str(path))
            ddp.sum_gradients(params)
            step_loss = ddp.sum_values(step_loss)[0] / n_sup
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm or float("inf"))
            state.step += 1
            finite = math.isfinite(step_loss) and bool(torch.isfinite(grad_norm))
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                writer.add_scalar("train/skipped_nonfinite", state.bad_steps + 1, state.step)
                skip_nonfinite(state, step_loss, grad_norm, t.max_bad_steps, ckpt_root)
            else:
                state.bad_steps = 0
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                elapsed = time.perf_counter() - started
                state.train_seconds += elapsed
                state.tokens_seen += n_tok
                supervised_seen += n_sup
                lr = scheduler.get_last_lr()[0]
                state.history.append({"step": state.step, "loss": step_loss, "lr": lr, "grad_norm": float(grad_norm),
                                      "tokens": n_tok, "supervised_tokens": n_sup, "seconds": elapsed})
                if state.step % t.logging_steps == 0:
                    writer.add_scalar("train/loss", step_loss, state.step)
                    writer.add_scalar("train/lr", lr, state.step)
                    writer.add_scalar("train/tokens_per_second", n_tok / elapsed, state.step)
                bar.update(task, completed=state.step, loss=step_loss, tps=state.tokens_seen / state.train_seconds)
            # a pending stop skips the periodic eval: it does not change training, and the save comes sooner
            if (finite and main and t.eval_steps and eval_examples and state.step % t.eval_steps == 0
                    and not stop_signal()):
                result = objective.evaluate(model, eval_examples)
                state.evals.append({"step": state.step, **result})
                writer.add_scalar("eval/loss", result["loss"], state.step)
                if on_eval:
                    on_eval(state.step, result)
            signum = ddp.max_value(stop_signal() or 0)  # a signal seen by any rank stops all of them
            if (finite and t.save_steps and state.step % t.save_steps == 0) or signum:
                path = ckpt.save_checkpoint(ckpt_root, model, optimizer, scheduler, state, t.save_total_limit,
                                            guards=guards) if main else None
                path = ddp.broadcast_object(path)  # also keeps the others from running ahead of the save
                if signum:
                    raise TrainingInterrupted(signum, str(path))
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:  # the stage saves the model after this returns: never a non-finite one
        raise NonFiniteLoss(f"trainable weights became non-finite ({bad[0]}, ...); the model was not saved")
    return TrainResult(state.step, state.history, state.evals, state.tokens_seen, supervised_seen,
                       state.train_seconds, resumed_from, changes, state.skipped)
