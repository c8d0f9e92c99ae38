"""PPO (Ziegler et al. 2019; Ouyang et al. 2022), hand-written because TRL 1.x no longer ships a PPO trainer:
a policy with a PEFT adapter, a value head on its trunk, a KL penalty to the frozen reference (the initial
policy, rl.reference), GAE and the clipped surrogate / value objectives.

    tuneforge train ppo.yaml            # stage: ppo; docs/ppo.md has a config and the algorithm

One rollout = training.batch_size prompts, one sampled completion each (seeded per rollout), scored by the
`ppo.rewards` sources; then `ppo_epochs` passes over shuffled minibatches of `minibatch_size` completions.
training.max_steps (or epochs over the prompts) counts rollouts; the LR schedule steps once per rollout.

Design choices, and why:
- Dropout is off (p = 0, as TRL's PPO `disable_dropout`): with it on, the ratio exp(logp_new - logp_old)
  is not 1 before any update and the clip statistics mean nothing.
- The value head is zero-initialised and trains with the policy in one AdamW (same LR); the value loss also
  reaches the shared trunk (its adapter), weighted by vf_coef.
- The reference is the initial policy (a copy of the adapter swapped in), not the adapter disabled: the two
  agree for an adapter that starts as the identity, and only the first is right for one that does not
  (LoRA with PiSSA init, whose adapter-disabled model is the residual of the base).
- KL runaway (a rollout's mean KL > ppo.max_kl): the update that produced the runaway policy is undone (the
  weights before it were kept in memory; not possible on the first rollout after a resume) and training
  stops with a warning; metrics.json says `stopped_early`.
- SIGINT / SIGTERM: the rollout in progress is abandoned within one generation step (or scoring chunk, or
  minibatch update, which is undone with the optimizer state), the last finished rollout is checkpointed and
  resume=auto replays the abandoned one exactly (rollouts are seeded by their number).
- training.grad_accum must be 1 (minibatch_size sets the update size) and the stage runs in one process.
- `on_eval` (tuneforge hpo) sees each rollout's training record (reward_mean, kl_mean, ...).
The pure math is in tuneforge/rl/ppo_math.py, the rollout in tuneforge/rl/ppo_rollout.py.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import torch

import tuneforge.stages.skeleton as skeleton
from tuneforge.config.schema import Config
from tuneforge.data.batching import epoch_microbatches
from tuneforge.errors import ConfigError, TrainingInterrupted
from tuneforge.report.rl import plot_reward_kl, question, samples_table, summary, template_name, write_samples
from tuneforge.rl import ppo_math as pm
from tuneforge.rl.policy_eval import evaluate_policy
from tuneforge.rl.ppo_rollout import (
    PolicyWithValue,
    Rollout,
    collect_rollout,
    disable_dropout,
    plan_rollouts,
    rollout_record,
)
from tuneforge.rl.prompts import PromptExample
from tuneforge.rl.reference import put_weights, trainable_weights
from tuneforge.rl.rewards import Rewards, load_rewards
from tuneforge.rl.sampling import Stopped, check_stop, gather_logprobs, to_batch
from tuneforge.train import checkpoint as ckpt
from tuneforge.train.guards import run_guards
from tuneforge.train.loop import (
    TrainResult,
    make_optimizer,
    progress_bar,
    resume_run,
    save_on_signal,
    skip_nonfinite,
    stop_on_signals,
)
from tuneforge.train.metric_log import open_metric_log
from tuneforge.train.precision import autocast


def update_policy(policy: PolicyWithValue, rollout: Rollout, optimizer, cfg: Config, precision: str,
                  state: ckpt.TrainState, generator: torch.Generator, pad_id: int, ckpt_root: Path,
                  stop: Callable[[], object] | None = None) -> dict[str, float]:
    """`ppo_epochs` passes over shuffled minibatches; a non-finite loss or gradient skips that update
    (train.loop.skip_nonfinite); a stop between minibatches raises Stopped (the caller undoes the updates)."""
    p, t = cfg.ppo, cfg.training
    params = [q for group in optimizer.param_groups for q in group["params"]]
    n = len(rollout.samples)
    stats: dict[str, list[float]] = {}
    tokens = skipped = 0
    for _ in range(p.ppo_epochs):
        order = torch.randperm(n, generator=generator).tolist()
        for i in range(0, n, p.minibatch_size):
            check_stop(stop)
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
            if not (torch.isfinite(loss.detach()) and torch.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                skip_nonfinite(state, float(loss.detach()), grad_norm, t.max_bad_steps, ckpt_root,
                               step=state.step + 1, unit="rollout", counted="updates")
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


def train_ppo(policy: PolicyWithValue, tokenizer, examples: list[PromptExample], rewards: Rewards, cfg: Config,
              out: Path, precision: str, log: Callable[[str], None] = print,
              on_eval: Callable[[int, dict], None] | None = None) -> tuple[TrainResult, dict | None]:
    """(result, stopped_early). History holds one record per rollout; kl_coef_next carries the KL controller
    across a resume."""
    t, p = cfg.training, cfg.ppo
    per_epoch, total = plan_rollouts(cfg, len(examples))
    optimizer, scheduler = make_optimizer([q for q in policy.parameters() if q.requires_grad], cfg, total)
    ckpt_root = out / "checkpoints"
    guards = run_guards(cfg, precision)  # resume refuses a changed model, data, seed or LR (resume_allow_changes)
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
    bar = progress_bar(t.progress, "ppo", "rollouts", ("reward {task.fields[reward]:.3f}", "kl {task.fields[kl]:.3f}"))
    with stop_on_signals() as stop_signal, bar, closing(writer):
        task = bar.add_task("ppo", total=total, completed=state.step, reward=float("nan"), kl=float("nan"))
        while state.step < total:
            started, rng_at_start = time.perf_counter(), torch.get_rng_state()
            epoch, k = divmod(state.step, per_epoch)
            chosen = [examples[i] for i in epoch_microbatches(len(examples), t.batch_size, cfg.seed, epoch)[k]]
            rollout_seed = cfg.seed * 1_000_003 + state.step + 1  # a resumed run draws the same completions
            undo = None  # what a stop during the update restores
            try:
                rollout = collect_rollout(policy, tokenizer, chosen, rewards, cfg, kl_ctl.coef, rollout_seed, precision,
                                          stop=stop_signal)
                kl_mean = float(rollout.kl.mean())
                if p.max_kl is not None and kl_mean > p.max_kl:
                    stopped = _stop_runaway(policy, before_update, state, kl_mean, p.max_kl, log)
                    break
                before_update = trainable_weights(policy)
                undo = (copy.deepcopy(optimizer.state_dict()), state.bad_steps, len(state.skipped))
                collected = time.perf_counter()
                update = update_policy(policy, rollout, optimizer, cfg, precision, state,
                                       torch.Generator().manual_seed(rollout_seed), tokenizer.pad_token_id, ckpt_root,
                                       stop=stop_signal)
            except Stopped:  # abandon this rollout: the checkpoint is the last finished one, resume replays it
                if undo is not None:
                    put_weights(policy, before_update)
                    optimizer.load_state_dict(undo[0])
                    state.bad_steps, state.skipped = undo[1], state.skipped[: undo[2]]
                optimizer.zero_grad(set_to_none=True)
                torch.set_rng_state(rng_at_start)
                path = save_on_signal(ckpt_root, policy, optimizer, scheduler, state, t.save_total_limit, guards)
                raise TrainingInterrupted(stop_signal(), str(path)) from None
            scheduler.step()
            coef = kl_ctl.coef
            kl_ctl.update(kl_mean, len(chosen))
            done = time.perf_counter()
            state.step += 1
            state.train_seconds += done - started
            state.tokens_seen += update["tokens"]
            record = rollout_record(state.step, rollout, update, coef, kl_ctl.coef, scheduler.get_last_lr()[0],
                                    {"seconds": done - started, "rollout_seconds": collected - started})
            writer.add_step(state.history, **record)
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
        put_weights(policy, before_update)
        state.history[-1]["reverted"] = True
    message = (f"rollout {state.step + 1}: mean KL to the reference {kl_mean:.3f} > ppo.max_kl {max_kl}; stopped "
               f"({'the last update undone' if reverted else 'no update of this process to undo'})")
    warnings.warn(message, stacklevel=2)
    log(message)
    return {"rollout": state.step + 1, "kl_mean": kl_mean, "max_kl": max_kl,
            "updates_kept": state.step - 1 if reverted else state.step}


def _section(before: list[dict], after: list[dict], stopped: dict | None, questions: list[str]) -> str:
    lines = ["## PPO", "", "![reward and KL per rollout](rollouts.png)", ""]
    if stopped:
        lines += [f"Stopped early at rollout {stopped['rollout']}: mean KL {stopped['kl_mean']:.3f} > "
                  f"ppo.max_kl {stopped['max_kl']}.", ""]
    return "\n".join(lines + samples_table(before, after, questions, "Sampled completions on eval prompts"))


def check_ppo_config(cfg: Config) -> None:
    """Beyond config.checks (the method table; one process, as stage_info says)."""
    if cfg.training.grad_accum != 1:
        raise ConfigError("key 'training.grad_accum': stage ppo updates in ppo.minibatch_size completions; "
                          "set grad_accum to 1")


def load_policy(run: skeleton.StageRun) -> tuple[PolicyWithValue, tuple[int, int]]:
    """The base with the method applied and a zero value head; its reference is this initial policy.
    Returns it and the (trainable, total) parameters, value head included."""
    model, (trainable, total) = skeleton.apply_method(run, skeleton.load_base(run))
    policy = PolicyWithValue(model, pm.ValueHead(model.config.hidden_size))
    head = sum(q.numel() for q in policy.value_head.parameters())
    run.log(f"value head: {head:,} trainable parameters")
    return policy, (trainable + head, total + head)


def run(cfg: Config, log: Callable[[str], None] = print, *, on_eval: Callable[[int, dict], None] | None = None) -> Path:
    run = skeleton.begin(cfg, log)
    check_ppo_config(cfg)
    rewards = load_rewards(cfg.ppo.rewards, "ppo.rewards")  # a bad source fails before anything is written
    data = skeleton.load_data(run)
    out = skeleton.open_output(run)
    policy, counts = load_policy(run)

    def evaluate() -> dict:
        return evaluate_policy(policy.model, run.tokenizer, data.eval, rewards, cfg.ppo, reference=policy.reference,
                               seed=cfg.seed, batch_size=cfg.training.batch_size, precision=run.precision)

    def initial() -> tuple[dict, dict]:
        result = evaluate()  # the policy is its reference: KL 0
        return summary(result), {"samples": result["samples"]}

    before, details = skeleton.eval_before(run, initial) if data.eval else ({}, {})
    result, stopped = train_ppo(policy, run.tokenizer, data.train, rewards, cfg, out, run.precision, run.log, on_eval)
    after = evaluate() if data.eval else {}
    skeleton.check_finite(policy)  # the value head too, before it is saved beside the adapter
    pm.save_value_head(policy.value_head, out)
    samples = details.get("samples") or [], after.get("samples") or []
    write_samples(out, *samples)
    if result.history:
        plot_reward_kl(result.history, out / "rollouts.png", "reward_mean", "kl_mean", "rollout", "mean reward",
                       "mean KL to reference (nats)")
    template = {"template": template_name(cfg, run.tokenizer), "chat_template": run.tokenizer.chat_template,
                "system_prompt": cfg.data.system_prompt}
    outcome = skeleton.Outcome(
        result, counts, before, summary(after) or {}, data.summary, extra={"stopped_early": stopped}, template=template,
        cost={"seconds_per_rollout": result.train_seconds / max(len(result.history), 1)},
        section=_section(*samples, stopped, [question(e) for e in data.eval]))
    return skeleton.finish(run, policy.model, outcome)
