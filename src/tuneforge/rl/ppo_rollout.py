"""One PPO rollout (stages/ppo.py): the policy with its value head, sampling a batch of prompts, scoring the
completions with the reward sources and every token with the policy, the value head and the reference (the
initial policy, rl.reference), then per-token rewards, GAE advantages and returns (rl.ppo_math).

    policy = PolicyWithValue(model, pm.ValueHead(model.config.hidden_size))   # the reference: model as now
    rollout = collect_rollout(policy, tokenizer, examples, rewards, cfg, kl_coef, seed, precision, stop=stop)

`stop` (the loop's signal flag) is checked at every generation step and between scoring chunks: a signal
abandons the rollout with rl.sampling.Stopped within one forward pass, before anything changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tuneforge.config.schema import Config
from tuneforge.rl import ppo_math as pm
from tuneforge.rl.prompts import PromptExample
from tuneforge.rl.reference import InitialPolicy
from tuneforge.rl.rewards import Rewards
from tuneforge.rl.sampling import Sample, check_stop, completion_logits, gather_logprobs, sample, to_batch
from tuneforge.train.precision import autocast, bf16_weights


class PolicyWithValue(nn.Module):
    """The policy (a peft model) and its value head, as one module for the optimizer and checkpoints, and
    `reference`: the policy as it was built (make it before a resume loads a checkpoint's weights)."""

    def __init__(self, model: nn.Module, value_head: pm.ValueHead) -> None:
        super().__init__()
        self.model = model
        self.value_head = value_head
        self.reference = InitialPolicy(model)  # not a module: no parameters, not in checkpoints

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
                 chunk: int, stop: Callable[[], object] | None = None) -> tuple[torch.Tensor, ...]:
    """(mask, logp, logp_ref, values), each [B, C], computed `chunk` samples at a time: the policy first, then
    the reference with its weights swapped in once; under bf16 the frozen weights are held in bf16 meanwhile
    (autocast's logits, without its casting them again at every forward)."""
    with bf16_weights(policy.model, precision):
        return _score_tokens(policy, samples, pad_id, temperature, precision, chunk, stop)


def _score_tokens(policy: PolicyWithValue, samples: list[Sample], pad_id: int, temperature: float, precision: str,
                  chunk: int, stop: Callable[[], object] | None) -> tuple[torch.Tensor, ...]:
    width = max(len(s.completion_ids) for s in samples)
    mask = torch.tensor([[i < len(s.completion_ids) for i in range(width)] for s in samples])
    logp, logp_ref, values = (torch.zeros(len(samples), width) for _ in range(3))
    batches = [(i, to_batch(samples[i : i + chunk], pad_id)) for i in range(0, len(samples), chunk)]
    for i, batch in batches:
        check_stop(stop)
        c = batch.completion_mask.shape[1]
        with autocast(precision):
            logits, v = policy.forward_completions(batch)
        logp[i : i + chunk, :c] = gather_logprobs(logits, batch, temperature)
        values[i : i + chunk, :c] = v.float() * batch.completion_mask
    with policy.reference():
        for i, batch in batches:
            check_stop(stop)
            with autocast(precision):
                ref_logits, _ = completion_logits(policy.model, batch)
            logp_ref[i : i + chunk, : batch.completion_mask.shape[1]] = gather_logprobs(ref_logits, batch, temperature)
    return mask, logp, logp_ref, values


def collect_rollout(policy: PolicyWithValue, tokenizer, examples: list[PromptExample], rewards: Rewards, cfg: Config,
                    kl_coef: float, seed: int, precision: str, stop: Callable[[], object] | None = None) -> Rollout:
    p = cfg.ppo
    samples = sample(policy.model, tokenizer, examples, p, seed=seed, batch_size=cfg.training.batch_size,
                     precision=precision, stop=stop)
    parts = rewards.breakdown(examples, [s.completion for s in samples])
    scores = rewards.combine(parts)
    mask, logp, logp_ref, values = score_tokens(policy, samples, tokenizer.pad_token_id, p.temperature, precision,
                                                p.minibatch_size, stop)
    token_rewards, kl = pm.token_rewards(logp, logp_ref, scores, mask, kl_coef)
    advantages, returns = pm.gae(token_rewards, values, mask, p.gamma, p.lam)
    if p.whiten_advantages:
        advantages = pm.whiten(advantages, mask)
    return Rollout(samples, scores, parts, mask, logp, values, kl, advantages, returns)


def rollout_record(step: int, rollout: Rollout, update: dict, kl_coef: float, kl_next: float, lr: float,
                   seconds: dict[str, float]) -> dict:
    """One line of train_log.jsonl."""
    lengths = rollout.mask.sum(1).float()
    return {"step": step, "reward_mean": float(rollout.scores.mean()),
            "reward_std": float(rollout.scores.std()) if len(rollout.scores) > 1 else 0.0,
            "kl_mean": float(rollout.kl.mean()), "kl_coef": kl_coef, "kl_coef_next": kl_next,
            "length_mean": float(lengths.mean()), "tokens_generated": int(lengths.sum()), "lr": lr, **update,
            **{f"reward/{name}": float(v.mean()) for name, v in rollout.parts.items() if len(rollout.parts) > 1},
            **seconds}


def plan_rollouts(cfg: Config, n_prompts: int) -> tuple[int, int]:
    """(rollouts per pass over the prompts, total rollouts)."""
    per_epoch = math.ceil(n_prompts / cfg.training.batch_size)
    return per_epoch, cfg.training.max_steps or math.ceil(cfg.training.epochs * per_epoch)


def disable_dropout(model: nn.Module) -> None:
    """p = 0 in every dropout module (as TRL's disable_dropout_in_model), whatever train / eval mode says."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
