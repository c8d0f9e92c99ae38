"""The pure math of PPO (stages/ppo.py): per-token rewards with a KL penalty, generalised advantage
estimation, the clipped surrogate and clipped value losses, the adaptive KL controller and the value head.
Every tensor is [B, C] over the completion tokens, with `mask` marking real ones (pad after EOS is 0).

    rewards, kl = token_rewards(logp_old, logp_ref, scores, mask, kl_coef)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    loss, stats = policy_loss(logp, logp_old, whiten(advantages, mask), mask, clip_range=0.2)

The formulas follow TRL's PPOTrainer (trl 0.x ppo_trainer.py, removed in 1.x) and Ziegler et al. 2019
("Fine-Tuning Language Models from Human Preferences") for the KL controller. The value head's file
(value_head.safetensors, beside the adapter) is saved and loaded here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

VALUE_HEAD = "value_head.safetensors"  # beside the adapter in a ppo run


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the real tokens (unbiased variance, as TRL); padding stays 0."""
    n = mask.sum()
    mean = masked_mean(x, mask)
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def token_rewards(logp: torch.Tensor, logp_ref: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards [B, C], kl [B]): -kl_coef * (logp - logp_ref) on every real token, plus the sequence score
    on the last real one. kl is the per-completion sum of logp - logp_ref (the sampled KL estimate)."""
    mask = mask.to(logp.dtype)
    per_token_kl = (logp - logp_ref) * mask
    rewards = -kl_coef * per_token_kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores * (mask.sum(1) > 0)
    return rewards, per_token_kl.sum(1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns). delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}; after the
    last real token V and A are 0 (the episode ended), which the mask enforces on right padding."""
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    width = values.shape[1]
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate: mean over real tokens of max(-A r, -A clip(r, 1 - eps, 1 + eps)),
    r = exp(logp - logp_old). Stats: clip_fraction (tokens where the clipped term won), approx_kl
    (0.5 mean (logp - logp_old)^2, as TRL)."""
    diff = logp - logp_old
    ratio = torch.exp(diff)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {"clip_fraction": float(masked_mean((clipped > unclipped).float(), mask)),
             "approx_kl": float(0.5 * masked_mean(diff.detach() ** 2, mask))}
    return loss, stats


def value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float) -> tuple[torch.Tensor, dict[str, float]]:
    """0.5 mean over real tokens of max((V - R)^2, (V_clipped - R)^2), V_clipped within clip_range_value of
    the rollout's value."""
    clipped_values = values_old + torch.clamp(values - values_old, -clip_range_value, clip_range_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, {"value_clip_fraction": float(masked_mean((clipped > unclipped).float(), mask))}


def entropy(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean per-token entropy of the sampling distribution over real tokens (nats)."""
    logp = torch.log_softmax(logits.detach().float() / temperature, dim=-1)
    return float(masked_mean(-(logp.exp() * logp).sum(-1), mask))


@dataclass
class KLController:
    """The KL penalty coefficient. Adaptive (Ziegler et al. 2019, TRL's AdaptiveKLController):
    coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon after each rollout of n samples, so the
    measured KL drifts toward `target`; fixed: coef never changes."""

    coef: float
    target: float
    horizon: int
    adaptive: bool = True

    def update(self, kl: float, n: int) -> float:
        if self.adaptive:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.coef *= 1 + error * n / self.horizon
        return self.coef


class ValueHead(nn.Module):
    """V(state) = Linear(hidden, 1) on the policy trunk's last (normed) hidden state. Zero-initialised, so
    the first values are 0 and the first update's value gradient does not disturb the trunk."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.float()).squeeze(-1)


def save_value_head(value_head: ValueHead, out: Path) -> None:
    tmp = out / f".{VALUE_HEAD}.tmp"
    save_file({k: v.detach().contiguous() for k, v in value_head.state_dict().items()}, str(tmp))
    os.replace(tmp, out / VALUE_HEAD)  # atomic: a reader never sees half a file


def load_value_head(run_dir: str | Path) -> ValueHead:
    """The value head a ppo run saved (runs.load_run gives the policy)."""
    weights = load_file(str(Path(run_dir) / VALUE_HEAD))
    head = ValueHead(weights["summary.weight"].shape[1])
    head.load_state_dict(weights)
    return head
