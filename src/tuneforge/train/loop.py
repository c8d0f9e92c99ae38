"""The training loop: padding-free micro-batches, gradient accumulation normalised by supervised tokens,
bf16 autocast, LR schedule, non-finite steps skipped, atomic checkpoints, exact resume guarded against
a changed run (tuneforge.train.checkpoint, .guards), and a clean stop on SIGINT/SIGTERM. Small on purpose:
every line is something the run contract promises (docs/reliability.md lists the tests that prove them).

    result = train(model, train_examples, eval_examples, cfg, output_dir, precision)
    result = train(..., objective=Objective(collate, loss_sum, evaluate))   # another stage's loss
    result = train(..., on_eval=lambda step, result: ...)   # sees every periodic evaluation (hpo pruning)
Under torchrun / accelerate launch (WORLD_SIZE > 1) each step's examples are split across ranks and the
gradients summed (tuneforge.train.distributed); rank 0 alone logs, evaluates and saves. With
training.distributed=fsdp the model is sharded over the ranks for training (tuneforge.train.fsdp) and
gathered back whole at the end, so the stage evaluates and saves an ordinary model. With
training.distributed=deepspeed the model and AdamW go through a DeepSpeed ZeRO engine (train/deepspeed_engine.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneforge.config.schema import Config
from tuneforge.data.batching import collate, epoch_microbatches
from tuneforge.data.templates import Example
from tuneforge.device import model_device
from tuneforge.errors import NonFiniteLoss, TrainingInterrupted
from tuneforge.train import checkpoint as ckpt
from tuneforge.train import compile as compile_mod
from tuneforge.train import deepspeed_engine as ds_engine
from tuneforge.train import distributed as ddp
from tuneforge.train import frozen, fsdp, heap
from tuneforge.train import guards as guards_mod
from tuneforge.train.attention import per_sample_attention, per_sample_attention_applies
from tuneforge.train.chunked_loss import chunked_loss_applies
from tuneforge.train.loss import evaluate_lm_loss, loss_sum
from tuneforge.train.metric_log import open_metric_log
from tuneforge.train.precision import grad_scaler
from tuneforge.train.steps import (  # noqa: F401  (re-exported: ppo and tests import them from here)
    Objective,
    forward_backward,
    make_optimizer,
    plan_steps,
    progress_bar,
    resume_run,
    save_on_signal,
    skip_nonfinite,
    step_batches,
    stop_on_signals,
)


def lm_objective(cfg: Config, precision: str, packed: bool) -> Objective:
    """Next-token loss on supervised positions, packed padding-free unless the method needs padded rows."""
    t = cfg.training
    chunked = chunked_loss_applies(t)
    return Objective(
        collate=lambda examples: collate(examples, packed, t.pack_length),
        loss_sum=lambda model, batch: loss_sum(model, batch, chunked),
        evaluate=lambda model, examples: evaluate_lm_loss(model, examples, t, precision, packed),
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
    # how the model was spread over the ranks: strategy, and each rank's parameter / optimizer-state bytes
    sharding: dict = field(default_factory=dict)
    compiled: bool = False  # training.compile: the training forward ran through torch.compile


def train(model, train_examples: list[Example], eval_examples: list[Example], cfg: Config, output_dir: Path,
          precision: str, log: Callable[[str], None] = print, packed: bool = True,
          objective: Objective | None = None, on_eval: Callable[[int, dict], None] | None = None) -> TrainResult:
    """`on_eval(step, result)` is called after each periodic evaluation (on rank 0); an exception it raises
    (e.g. optuna.TrialPruned) stops training and propagates. Under bf16 autocast the frozen linear weights are
    held in bf16 while the loop runs, and in fp32 again when it returns (training.frozen_bf16, train/frozen.py).
    On the CPU the heap's free pages go back to the system once training ends (tuneforge/train/heap.py)."""
    per_sample = packed and objective is None and per_sample_attention_applies(cfg.training)  # the LM's packed rows
    with frozen.held_in_bf16(model, cfg, precision, log, ddp.world_size()), per_sample_attention(model, per_sample):
        result = _train(model, train_examples, eval_examples, cfg, output_dir, precision, log, packed, objective,
                        on_eval)
        if model_device(model).type == "cpu":  # once: the steps' fragmented heap goes back before the fp32
            heap.release_free_memory()  # weights and the evaluation after training are allocated on top of it
    return result


def _train(model, train_examples: list[Example], eval_examples: list[Example], cfg: Config, output_dir: Path,
           precision: str, log: Callable[[str], None], packed: bool, objective: Objective | None,
           on_eval: Callable[[int, dict], None] | None) -> TrainResult:
    t = cfg.training
    objective = objective or lm_objective(cfg, precision, packed)
    per_epoch, total_steps = plan_steps(cfg, len(train_examples))
    sharded = t.distributed == "fsdp" and ddp.world_size() > 1
    if sharded:  # before the optimizer: it must hold the shards
        fsdp.shard_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, cfg, total_steps)
    zero = ds_engine.wrap(model, optimizer, t, precision) if t.distributed == "deepspeed" and ddp.world_size() > 1 \
        else None  # ZeRO partitions the AdamW state (and, ZeRO-3, the weights); the schedule stays the loop's
    even = sharded or zero is not None  # every forward/backward a collective: the same count on every rank
    # training.compile: forwards that train run compiled; the model itself (saved, evaluated) stays as it is
    runner = compile_mod.compiled_forward(model, log) if t.compile and not even else model
    scaler = grad_scaler(precision)  # fp16 (GPUs without bf16) only
    trim = t.trim_memory and model_device(model).type == "cpu"  # CPU heap only (tuneforge/train/heap.py)
    if t.mmap_threshold_kb and model_device(model).type == "cpu" and not heap.limit_heap_blocks(t.mmap_threshold_kb):
        log("training.mmap_threshold_kb: this C library has no glibc mallopt; the key does nothing here")
    ckpt_root = output_dir / "checkpoints"
    guards = guards_mod.run_guards(cfg, precision)

    state = ckpt.TrainState(step=0, bad_steps=0, history=[], tokens_seen=0, train_seconds=0.0)
    resumed_from, changes = None, []
    if cfg.resume:
        resumed_from, restored, changes = resume_run(cfg, ckpt_root, guards, model, optimizer, scheduler, log,
                                                     output_dir, zero)
        state = restored or state
        if scaler is not None and state.scaler:
            scaler.load_state_dict(state.scaler)  # fp16: resume with the scale the run had reached

    supervised_seen = sum(h["supervised_tokens"] for h in state.history)
    model.train()
    main = ddp.is_main()
    writer = open_metric_log(cfg, output_dir, state.step + 1 if resumed_from else None)
    def eval_due() -> bool:
        return bool((main or even) and t.eval_steps and eval_examples and state.step % t.eval_steps == 0)

    def periodic_eval() -> None:
        result = objective.evaluate(model, eval_examples)
        state.evals.append({"step": state.step, **result})
        writer.add_scalar("eval/loss", result["loss"], state.step)
        writer.add_eval(state.step, result)  # live, for the studio's curve
        if on_eval and main:
            on_eval(state.step, result)

    with stop_on_signals() as stop_signal, progress_bar(t.progress and main) as bar, closing(writer):
        task = bar.add_task("train", total=total_steps, completed=state.step, loss=float("nan"), tps=0.0)
        # a stop at an eval step skips that eval (below); resumed from that step's checkpoint, the run does it first
        if resumed_from and state.step and eval_due() and all(e["step"] != state.step for e in state.evals):
            periodic_eval()
        while state.step < total_steps:
            started, rng_at_start = time.perf_counter(), torch.get_rng_state()
            epoch, k = divmod(state.step, per_epoch)
            micro = epoch_microbatches(len(train_examples), t.batch_size, cfg.seed, epoch)
            batches, n_real = step_batches(objective, train_examples, micro[k * t.grad_accum : (k + 1) * t.grad_accum],
                                           even=even)
            # normalise by the supervised tokens of the whole (global) step, whatever rank holds them
            n_sup, n_tok = (int(v) for v in ddp.sum_values(sum(b.n_supervised for b in batches[:n_real]),
                                                            sum(b.n_tokens for b in batches[:n_real])))
            # one process may abandon a step between micro-batches; ranks must agree, so they finish it
            # DeepSpeed: the engine's forward (it counts ZeRO-3's micro-steps, so gradients accumulate, not replace)
            step_loss, signum = forward_backward(objective, zero.engine if zero else runner, batches, n_real, n_sup,
                                                 precision, stop_signal if ddp.world_size() == 1 else None, scaler,
                                                 zero.backward if zero else None)
            if signum:
                optimizer.zero_grad(set_to_none=True)
                torch.set_rng_state(rng_at_start)  # resume replays this step exactly
                path = save_on_signal(ckpt_root, model, optimizer, scheduler, state, t.save_total_limit, guards)
                raise TrainingInterrupted(signum, str(path))
            if not even:  # FSDP / DeepSpeed have reduced (summed) the gradients during backward
                ddp.sum_gradients(params)
            step_loss = ddp.sum_values(step_loss)[0] / n_sup
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip and check the true gradients
            if zero is not None:  # DeepSpeed clips and steps in one call; a non-finite loss is not stepped
                grad_norm = zero.step() if math.isfinite(step_loss) else torch.tensor(float("nan"))
            else:
                grad_norm = fsdp.full(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm or float("inf")))
            state.step += 1
            finite = math.isfinite(step_loss) and bool(torch.isfinite(grad_norm))
            if not finite and scaler is not None and math.isfinite(step_loss):
                scaler.update()  # an fp16 overflow: the scaler lowers its scale, the step is not counted as bad
                state.scaler = scaler.state_dict()
                optimizer.zero_grad(set_to_none=True)
                state.skipped.append({"step": state.step, "loss": str(step_loss), "reason": "fp16 overflow"})
            elif not finite:
                optimizer.zero_grad(set_to_none=True)
                if zero is not None and not math.isfinite(step_loss):
                    zero.skip()
                writer.add_scalar("train/skipped_nonfinite", state.bad_steps + 1, state.step)
                skip_nonfinite(state, step_loss, grad_norm, t.max_bad_steps, ckpt_root)
            else:
                state.bad_steps = 0
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                    state.scaler = scaler.state_dict()
                elif zero is None:  # (DeepSpeed has stepped)
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if trim:
                    heap.release_free_memory()
                elapsed = time.perf_counter() - started
                state.train_seconds += elapsed
                state.tokens_seen += n_tok
                supervised_seen += n_sup
                lr = scheduler.get_last_lr()[0]
                writer.add_step(state.history, step=state.step, loss=step_loss, lr=lr, grad_norm=float(grad_norm),
                                tokens=n_tok, supervised_tokens=n_sup, seconds=elapsed)
                if state.step % t.logging_steps == 0:
                    writer.add_scalar("train/loss", step_loss, state.step)
                    writer.add_scalar("train/lr", lr, state.step)
                    writer.add_scalar("train/tokens_per_second", n_tok / elapsed, state.step)
                bar.update(task, completed=state.step, loss=step_loss, tps=state.tokens_seen / state.train_seconds)
            # a pending stop skips the periodic eval: it does not change training, and the save comes sooner.
            # Sharded, every rank evaluates (each forward all-gathers), so they must agree on it.
            if (finite and eval_due() and not (ddp.max_value(stop_signal() or 0) if even else stop_signal())):
                periodic_eval()
            signum = ddp.max_value(stop_signal() or 0)  # a signal seen by any rank stops all of them
            if (finite and t.save_steps and state.step % t.save_steps == 0) or signum:
                # every rank all-gathers
                tensors = zero.gather_state() if zero else ckpt.gather_state(model, optimizer) if sharded else None
                path = ckpt.save_checkpoint(ckpt_root, model, optimizer, scheduler, state, t.save_total_limit,
                                            guards=guards, tensors=tensors) if main else None
                path = ddp.broadcast_object(path)  # also keeps the others from running ahead of the save
                if signum:
                    raise TrainingInterrupted(signum, str(path))
    sharding = {"strategy": t.distributed if ddp.world_size() > 1 else "none",
                "per_rank": ddp.gather_object(zero.local_bytes() if zero else fsdp.local_bytes(model, optimizer))}
    if sharded:
        fsdp.unshard_model(model)  # every rank: the whole model again, for the stage to evaluate and save
    if zero is not None:
        zero.consolidate()
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:  # the stage saves the model after this returns: never a non-finite one
        raise NonFiniteLoss(f"trainable weights became non-finite ({bad[0]}, ...); the model was not saved")
    return TrainResult(state.step, state.history, state.evals, state.tokens_seen, supervised_seen,
                       state.train_seconds, resumed_from, changes, state.skipped, sharding, runner is not model)
