"""PPO (Ziegler et al. 2019; Ouyang et al. 2022), hand-written because TRL 1.x no longer ships a PPO trainer:
a policy with a PEFT adapter, a value head on its trunk, a KL penalty to the frozen reference (the same
model with the adapter disabled, no second copy), GAE and the clipped surrogate / value objectives.

    tuneforge train ppo.yaml            # stage: ppo; docs/ppo.md has a config and the algorithm

One rollout = training.batch_size prompts, one sampled completion each (seeded per rollout), scored by the
`ppo.rewards` sources; then `ppo_epochs` passes over shuffled minibatches of `minibatch_size` completions.
training.max_steps (or epochs over the prompts) counts rollouts; the LR schedule steps once per rollout.

Design choices, and why:
- Dropout is off (p = 0, as TRL's PPO `disable_dropout`): with it on, the ratio exp(logp_new - logp_old)
  is not 1 before any update and the clip statistics mean nothing.
- The value head is zero-initialised and trains with the policy in one AdamW (same LR); the value loss also
  reaches the shared trunk (its adapter), weighted by vf_coef.
- KL runaway (a rollout's mean KL > ppo.max_kl): the update that produced the runaway policy is undone (the
  weights before it were kept in memory; not possible on the first rollout after a resume) and training
  stops with a warning; metrics.json says `stopped_early`.
- training.grad_accum must be 1 (minibatch_size sets the update size) and the stage runs in one process.
- `on_eval` (tuneforge hpo) sees each rollout's training record (reward_mean, kl_mean, ...).
The pure math is in tuneforge/rl/ppo_math.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from transformers import get_scheduler

from tuneforge.config.load import dump_config
from tuneforge.config.schema import Config
from tuneforge.data.batching import epoch_microbatches
from tuneforge.data.dataset import load_train_eval_records
from tuneforge.errors import ConfigError, NonFiniteLoss, TrainingInterrupted, UserError
from tuneforge.fsutil import write_json_atomic, write_text_atomic
from tuneforge.methods import METHODS, MethodContext, count_params
from tuneforge.models import load_model, load_tokenizer, resolve_model
from tuneforge.report.rl import (
    plot_reward_kl,
    question,
    samples_table,
    summary,
    template_name,
    write_rl_report,
)
from tuneforge.rl import ppo_math as pm
from tuneforge.rl.policy_eval import evaluate_policy
from tuneforge.rl.prompts import PromptExample, load_prompt_examples
from tuneforge.rl.rewards import Rewards, load_rewards
from tuneforge.rl.sampling import Sample, completion_logits, gather_logprobs, sample, to_batch
from tuneforge.stages.lm import _save_model, check_config, cost_metrics, prepare_output_dir_once
from tuneforge.train import checkpoint as ckpt
from tuneforge.train import distributed as ddp
from tuneforge.train.loop import TrainResult, resume_run, stop_on_signals
from tuneforge.train.metric_log import open_metric_log
from tuneforge.train.precision import autocast, resolve_precision


class PolicyWithValue(nn.Module):
    """The policy (a peft model) and its value head, as one module for the optimizer and checkpoints."""

    def __init__(self, model: nn.Module, value_head: pm.ValueHead) -> None:
        super().__init__()
        self.model = model
        self.value_head = value_head

    def forward_completions(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, C, V] predicting each completion token, values [B, C] of the states before them)."""
        logits, out = completion_logits(self.model, batch, output_hidden_states=True)
        width = batch.completion_mask.shape[1]
        return logits, self.value_head(out.hidden_states[-1][:, -(width + 1) : -1])


@dataclass
class Rollout:
    samples: list[Sample]
    scores: torch.Tensor  # [B] reward totals
    parts: dict[str, torch.Tensor]  # per reward source
    mask: torch.Tensor  # [B, C] real completion tokens
    logp: torch.Tensor  # [B, C] policy (old) log-probs
    values: torch.Tensor  # [B, C]
    kl: torch.Tensor  # [B] sum over tokens of logp - logp_ref
    advantages: torch.Tensor
    returns: torch.Tensor


@torch.no_grad()
def score_tokens(policy: PolicyWithValue, samples: list[Sample], pad_id: int, temperature: float, precision: str,
                 chunk: int) -> tuple[torch.Tensor, ...]:
    """(mask, logp, logp_ref, values), each [B, C], computed `chunk` samples at a time."""
    width = max(len(s.completion_ids) for s in samples)
    mask = torch.tensor([[i < len(s.completion_ids) for i in range(width)] for s in samples])
    logp, logp_ref, values = (torch.zeros(len(samples), width) for _ in range(3))
    for i in range(0, len(samples), chunk):
        batch = to_batch(samples[i : i + chunk], pad_id)
        c = batch.completion_mask.shape[1]
        with autocast(precision):
            logits, v = policy.forward_completions(batch)
            with policy.model.disable_adapter():  # the reference: the same weights without the adapter
                ref_logits, _ = completion_logits(policy.model, batch)
        logp[i : i + chunk, :c] = gather_logprobs(logits, batch, temperature)
        logp_ref[i : i + chunk, :c] = gather_logprobs(ref_logits, batch, temperature)
        values[i : i + chunk, :c] = v.float() * batch.completion_mask
    return mask, logp, logp_ref, values


def collect_rollout(policy: PolicyWithValue, tokenizer, examples: list[PromptExample], rewards: Rewards, cfg: Config,
                    kl_coef: float, seed: int, precision: str) -> Rollout:
    p = cfg.ppo
    samples = sample(policy.model, tokenizer, examples, p, seed=seed, batch_size=cfg.training.batch_size,
                     precision=precision)
    parts = rewards.breakdown(examples, [s.completion for s in samples])
    scores = rewards.combine(parts)
    mask, logp, logp_ref, values = score_tokens(policy, samples, tokenizer.pad_token_id, p.temperature, precision,
                                                p.minibatch_size)
    token_rewards, kl = pm.token_rewards(logp, logp_ref, scores, mask, kl_coef)
    advantages, returns = pm.gae(token_rewards, values, mask, p.gamma, p.lam)
    if p.whiten_advantages:
        advantages = pm.whiten(advantages, mask)
    return Rollout(samples, scores, parts, mask, logp, values, kl, advantages, returns)


def update_policy(policy: PolicyWithValue, rollout: Rollout, optimizer, params: list, cfg: Config, precision: str,
                  state: ckpt.TrainState, generator: torch.Generator, pad_id: int) -> dict[str, float]:
    """`ppo_epochs` passes over shuffled minibatches; a non-finite loss or gradient skips that update."""
    p, t = cfg.ppo, cfg.training
    n = len(rollout.samples)
    stats: dict[str, list[float]] = {}
    tokens = skipped = 0
    for _ in range(p.ppo_epochs):
        order = torch.randperm(n, generator=generator).tolist()
        for i in range(0, n, p.minibatch_size):
            idx = order[i : i + p.minibatch_size]
            batch = to_batch([rollout.samples[j] for j in idx], pad_id)
            c, mask = batch.completion_mask.shape[1], batch.completion_mask
            with autocast(precision):
                logits, values = policy.forward_completions(batch)
            logp = gather_logprobs(logits, batch, p.temperature)
            pg, pg_stats = pm.policy_loss(logp, rollout.logp[idx, :c], rollout.advantages[idx, :c], mask, p.clip_range)
            vf, vf_stats = pm.value_loss(values.float(), rollout.values[idx, :c], rollout.returns[idx, :c], mask,
                                         p.clip_range_value)
            loss = pg + p.vf_coef * vf
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm or float("inf"))
            if not _finite(loss, grad_norm):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                state.bad_steps += 1
                state.skipped.append({"step": state.step + 1, "loss": str(float(loss.detach())),
                                      "grad_norm": str(float(grad_norm))})
                warnings.warn(f"rollout {state.step + 1}: non-finite loss/gradient ({float(loss.detach())}); update skipped",
                              stacklevel=1)
                if state.bad_steps >= t.max_bad_steps:
                    raise NonFiniteLoss(f"{state.bad_steps} non-finite updates in a row (training.max_bad_steps); "
                                        "stopped, nothing saved")
                continue
            state.bad_steps = 0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch.attention_mask.sum())
            step = {"loss": float(loss.detach()), "policy_loss": float(pg.detach()), "value_loss": float(vf.detach()),
                    "grad_norm": float(grad_norm), "entropy": pm.entropy(logits, mask, p.temperature),
                    **pg_stats, **vf_stats}
            for key, value in step.items():
                stats.setdefault(key, []).append(value)
    means = {k: sum(v) / len(v) for k, v in stats.items()} if stats else {"loss": float("nan")}
    return {**means, "tokens": tokens, "skipped_updates": skipped}


def disable_dropout(model: nn.Module) -> None:
    """p = 0 in every dropout module (as TRL's disable_dropout_in_model), whatever train / eval mode says."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def _finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    return bool(torch.isfinite(loss.detach()) and torch.isfinite(grad_norm))


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]ppo"), BarColumn(), TextColumn("{task.completed}/{task.total} rollouts"),
                    TextColumn("reward {task.fields[reward]:.3f}"), TextColumn("kl {task.fields[kl]:.3f}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def rollout_record(step: int, rollout: Rollout, update: dict, kl_coef: float, kl_next: float, lr: float,
                   seconds: dict[str, float]) -> dict:
    """One line of train_log.jsonl."""
    lengths = rollout.mask.sum(1).float()
    record = {"step": step, "reward_mean": float(rollout.scores.mean()),
              "reward_std": float(rollout.scores.std()) if len(rollout.scores) > 1 else 0.0,
              "kl_mean": float(rollout.kl.mean()), "kl_coef": kl_coef, "kl_coef_next": kl_next,
              "length_mean": float(lengths.mean()), "tokens_generated": int(lengths.sum()), "lr": lr, **update,
              **{f"reward/{name}": float(v.mean()) for name, v in rollout.parts.items() if len(rollout.parts) > 1},
              **seconds}
    return record


def plan_rollouts(cfg: Config, n_prompts: int) -> tuple[int, int]:
    """(rollouts per pass over the prompts, total rollouts)."""
    per_epoch = math.ceil(n_prompts / cfg.training.batch_size)
    return per_epoch, cfg.training.max_steps or math.ceil(cfg.training.epochs * per_epoch)


def train_ppo(policy: PolicyWithValue, tokenizer, examples: list[PromptExample], rewards: Rewards, cfg: Config,
              out: Path, precision: str, log: Callable[[str], None] = print,
              on_eval: Callable[[int, dict], None] | None = None) -> tuple[TrainResult, dict | None]:
    """(result, stopped_early). History holds one record per rollout; kl_coef_next carries the KL controller
    across a resume."""
    t, p = cfg.training, cfg.ppo
    per_epoch, total = plan_rollouts(cfg, len(examples))
    params = [q for q in policy.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    warmup = t.warmup_steps if t.warmup_steps is not None else int(round(t.warmup_ratio * total))
    scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    ckpt_root = out / "checkpoints"
    guards = ckpt.run_guards(cfg)  # resume refuses a changed model, data, seed or LR (resume_allow_changes)
    resumed_from, state, changes = None, None, []
    if cfg.resume:
        resumed_from, state, changes = resume_run(cfg, ckpt_root, guards, policy, optimizer, scheduler, log, out)
    state = state or ckpt.TrainState(step=0, bad_steps=0, history=[], tokens_seen=0, train_seconds=0.0)
    kl_ctl = pm.KLController(state.history[-1]["kl_coef_next"] if state.history else p.kl_coef, p.target_kl,
                             p.kl_horizon, p.kl_control == "adaptive")
    disable_dropout(policy)
    policy.train()  # train mode, so training.gradient_checkpointing takes effect
    before_update: dict[str, torch.Tensor] | None = None
    stopped = None
    writer = open_metric_log(cfg, out, state.step + 1 if resumed_from else None)
    with stop_on_signals() as stop_signal, _progress(t.progress) as bar, closing(writer):
        task = bar.add_task("ppo", total=total, completed=state.step, reward=float("nan"), kl=float("nan"))
        while state.step < total:
            started = time.perf_counter()
            epoch, k = divmod(state.step, per_epoch)
            chosen = [examples[i] for i in epoch_microbatches(len(examples), t.batch_size, cfg.seed, epoch)[k]]
            rollout_seed = cfg.seed * 1_000_003 + state.step + 1  # a resumed run draws the same completions
            rollout = collect_rollout(policy, tokenizer, chosen, rewards, cfg, kl_ctl.coef, rollout_seed, precision)
            kl_mean = float(rollout.kl.mean())
            if p.max_kl is not None and kl_mean > p.max_kl:
                stopped = _stop_runaway(policy, before_update, state, kl_mean, p.max_kl, log)
                break
            before_update = {n: q.detach().clone() for n, q in policy.named_parameters() if q.requires_grad}
            collected = time.perf_counter()
            generator = torch.Generator().manual_seed(rollout_seed)
            update = update_policy(policy, rollout, optimizer, params, cfg, precision, state, generator,
                                   tokenizer.pad_token_id)
            scheduler.step()
            coef = kl_ctl.coef
            kl_ctl.update(kl_mean, len(chosen))
            done = time.perf_counter()
            state.step += 1
            state.train_seconds += done - started
            state.tokens_seen += update["tokens"]
            record = rollout_record(state.step, rollout, update, coef, kl_ctl.coef, scheduler.get_last_lr()[0],
                                    {"seconds": done - started, "rollout_seconds": collected - started})
            state.history.append(record)
            for key, value in record.items():
                if key != "step":
                    writer.add_scalar(f"ppo/{key}", value, state.step)
            bar.update(task, completed=state.step, reward=record["reward_mean"], kl=kl_mean)
            if on_eval:
                on_eval(state.step, record)
            signum = stop_signal()
            if (t.save_steps and state.step % t.save_steps == 0) or signum:
                path = ckpt.save_checkpoint(ckpt_root, policy, optimizer, scheduler, state, t.save_total_limit,
                                            guards=guards)
                if signum:
                    raise TrainingInterrupted(signum, str(path))
    generated = sum(h["tokens_generated"] for h in state.history)
    return TrainResult(state.step, state.history, [], state.tokens_seen, generated, state.train_seconds,
                       resumed_from, changes, state.skipped), stopped


def _stop_runaway(policy, before_update: dict | None, state: ckpt.TrainState, kl_mean: float, max_kl: float,
                  log) -> dict:
    reverted = before_update is not None
    if reverted:  # the last update produced the runaway policy: keep the weights from before it
        with torch.no_grad():
            for name, q in policy.named_parameters():
                if name in before_update:
                    q.copy_(before_update[name])
        state.history[-1]["reverted"] = True
    message = (f"rollout {state.step + 1}: mean KL to the reference {kl_mean:.3f} > ppo.max_kl {max_kl}; stopped "
               f"({'the last update undone' if reverted else 'no update of this process to undo'})")
    warnings.warn(message, stacklevel=2)
    log(message)
    return {"rollout": state.step + 1, "kl_mean": kl_mean, "max_kl": max_kl,
            "updates_kept": state.step - 1 if reverted else state.step}


def plot_rollouts(history: list[dict], path: Path) -> None:
    plot_reward_kl(history, path, "reward_mean", "kl_mean", "rollout", "mean reward", "mean KL to reference (nats)")


def _section(before: dict, after: dict, stopped: dict | None, questions: list[str]) -> str:
    lines = ["## PPO", "", "![reward and KL per rollout](rollouts.png)", ""]
    if stopped:
        lines += [f"Stopped early at rollout {stopped['rollout']}: mean KL {stopped['kl_mean']:.3f} > "
                  f"ppo.max_kl {stopped['max_kl']}.", ""]
    return "\n".join(lines + samples_table(before, after, questions, "Sampled completions on eval prompts"))


def check_ppo_config(cfg: Config) -> None:
    check_config(cfg)
    if cfg.training.grad_accum != 1:
        raise ConfigError("key 'training.grad_accum': stage ppo updates in ppo.minibatch_size completions; "
                          "set grad_accum to 1")
    if ddp.world_size() > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("stage ppo runs in one process (no --nproc / torchrun)")


def _eval(policy: PolicyWithValue, tokenizer, examples: list, rewards: Rewards, cfg: Config, precision: str) -> dict:
    return evaluate_policy(policy.model, tokenizer, examples, rewards, cfg.ppo, reference=policy.model.disable_adapter,
                           seed=cfg.seed, batch_size=cfg.training.batch_size, precision=precision)


def load_policy(cfg: Config) -> PolicyWithValue:
    method = METHODS[cfg.method.name]
    model = load_model(cfg.model, cfg.trust_remote_code, quantize_4bit=method.quantized_base)
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    ctx = MethodContext(model_path=resolve_model(cfg.model), gradient_checkpointing=cfg.training.gradient_checkpointing)
    model = method.apply(model, cfg.method, ctx)
    return PolicyWithValue(model, pm.ValueHead(model.config.hidden_size))


def run(cfg: Config, log: Callable[[str], None] = print, *, on_eval: Callable[[int, dict], None] | None = None) -> Path:
    wall_start = time.perf_counter()
    check_ppo_config(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    rewards = load_rewards(cfg.ppo.rewards, "ppo.rewards")  # a bad source fails before anything is written
    train_records, eval_records = load_train_eval_records(cfg, log)
    examples, train_stats = load_prompt_examples(cfg, tokenizer, train_records)
    eval_examples, eval_stats = (load_prompt_examples(cfg, tokenizer, eval_records[: cfg.eval.max_samples])
                                 if eval_records else ([], None))
    data_stats = {split: {**stats, "dropped_no_supervised": 0} for split, stats in
                  (("train", train_stats), ("eval", eval_stats)) if stats}
    log(f"data: {len(examples)} train / {len(eval_examples)} eval prompts ({train_stats['truncated']} truncated)")

    out = prepare_output_dir_once(cfg)  # nothing is written before every input above checked out
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg.training.precision)
    policy = load_policy(cfg)
    trainable, total = count_params(policy.model)
    head = sum(q.numel() for q in policy.value_head.parameters())
    trainable, total = trainable + head, total + head
    log(f"method {cfg.method.name} + value head: {trainable:,} trainable of {total:,} parameters")

    before_file = out / "eval_before.json"  # computed once, so a resumed run reports the same base
    if cfg.eval.before and eval_examples and not before_file.is_file():
        log("evaluating the initial policy ...")
        write_json_atomic(before_file, _eval(policy, tokenizer, eval_examples, rewards, cfg, precision))
    eval_before = json.loads(before_file.read_text()) if before_file.is_file() else {}

    result, stopped = train_ppo(policy, tokenizer, examples, rewards, cfg, out, precision, log, on_eval)
    eval_after = _eval(policy, tokenizer, eval_examples, rewards, cfg, precision) if eval_examples else {}
    if not all(torch.isfinite(q).all() for q in policy.parameters() if q.requires_grad):
        raise UserError("refusing to save non-finite weights")
    _save_model(policy.model, tokenizer, out, METHODS[cfg.method.name])
    pm.save_value_head(policy.value_head, out)
    write_json_atomic(out / "template.json", {"template": template_name(cfg, tokenizer),
                                              "chat_template": tokenizer.chat_template,
                                              "system_prompt": cfg.data.system_prompt})
    write_text_atomic(out / "train_log.jsonl", "".join(json.dumps(h) + "\n" for h in result.history))
    train_block = cost_metrics(result, wall_start, policy.model, trainable, total, precision, "tokens_generated")
    metrics = {
        "model": cfg.model, "stage": cfg.stage, "method": cfg.method.name,
        "eval_before": summary(eval_before), "eval_after": summary(eval_after),
        "train": {**train_block, "seconds_per_rollout": result.train_seconds / max(len(result.history), 1)},
        "stopped_early": stopped,
        "data": data_stats,
    }
    section = _section(eval_before, eval_after, metrics["stopped_early"], [question(e) for e in eval_examples])
    write_rl_report(out, metrics, result.history, eval_before, eval_after, dump_config(cfg), section,
                    ("rollouts.png", plot_rollouts))
    return out
