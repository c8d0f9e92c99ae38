"""The losses and eval metrics of the reference-free pair objectives (orpo, simpo, cpo) and of kto, written from
the papers' formulas over response log-probs (data.dpo_pairs / data.kto_rows ids, scored by
train.preference). TRL 1.16's trainers train them; these compute tuneforge's before / after metrics, and the
tests check both against each other and against the formulas on hand-built numbers.

    metrics = pair_metrics("simpo", logps, cfg.simpo)      # logps: (chosen, rejected, n_chosen, n_rejected)
    metrics = kto_metrics(policy, reference, kl_policy, kl_reference, labels, prompts, cfg.kto)

ORPO (Hong et al. 2024, eq. 6-7): NLL(chosen) + beta * -log sigmoid(log odds(chosen) - log odds(rejected)),
  odds(y) = P / (1 - P) with P = exp(mean token log-prob of y).
SimPO (Meng et al. 2024, eq. 6): -log sigmoid(beta * (mean logp(chosen) - mean logp(rejected)) - gamma).
CPO (Xu et al. 2024, eq. 3 + NLL): -log sigmoid(beta * (logp(chosen) - logp(rejected))) + cpo_alpha * NLL(chosen).
KTO (Ethayarajh et al. 2024, eq. 7): r = log pi(y|x) - log ref(y|x), z = max(0, KL estimate);
  desirable: w_d * (1 - sigmoid(beta * (r - z))), undesirable: w_u * (1 - sigmoid(beta * (z - r))).
NLL is the mean over all chosen tokens of the batch, as TRL computes it (cross-entropy over the tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Logps = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # chosen, rejected, n_chosen, n_rejected


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _mean(logps: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return logps / n.clamp(min=1)


def _nll(chosen: torch.Tensor, n_chosen: torch.Tensor) -> torch.Tensor:
    return -chosen.sum() / n_chosen.sum().clamp(min=1)


def orpo_loss(logps: Logps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-pair log odds ratio)."""
    c, r = _mean(logps[0], logps[2]), _mean(logps[1], logps[3])
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    return _nll(logps[0], logps[2]) - beta * F.logsigmoid(log_odds).mean(), log_odds


def simpo_loss(logps: Logps, beta: float, gamma: float) -> torch.Tensor:
    c, r = _mean(logps[0], logps[2]), _mean(logps[1], logps[3])
    return -F.logsigmoid(beta * (c - r) - gamma).mean()


def cpo_loss(logps: Logps, beta: float, cpo_alpha: float) -> torch.Tensor:
    return -F.logsigmoid(beta * (logps[0] - logps[1])).mean() + cpo_alpha * _nll(logps[0], logps[2])


def pair_loss(objective: str, logps: Logps, block) -> torch.Tensor:
    if objective == "orpo":
        return orpo_loss(logps, block.beta)[0]
    if objective == "simpo":
        return simpo_loss(logps, block.beta, block.gamma)
    return cpo_loss(logps, block.beta, block.cpo_alpha)


def pair_rewards(objective: str, logps: Logps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The implicit rewards TRL logs: beta * summed log-prob (cpo), beta * mean token log-prob (orpo, simpo)."""
    if objective == "cpo":
        return beta * logps[0], beta * logps[1]
    return beta * _mean(logps[0], logps[2]), beta * _mean(logps[1], logps[3])


def pair_metrics(objective: str, logps: Logps, block) -> dict:
    """Eval-set metrics of orpo / simpo / cpo from the policy's response log-probs (no reference)."""
    chosen, rejected = pair_rewards(objective, logps, block.beta)
    margin = chosen - rejected
    out = {"loss": float(pair_loss(objective, logps, block)), "reward_accuracy": float((margin > 0).float().mean()),
           "reward_margin": float(margin.mean()), "chosen_reward": float(chosen.mean()),
           "rejected_reward": float(rejected.mean()), "logp_accuracy": float((logps[0] > logps[1]).float().mean()),
           "chosen_logp": float(logps[0].mean()), "rejected_logp": float(logps[1].mean()),
           "chosen_nll": float(_nll(logps[0], logps[2])), "pairs": int(logps[0].numel())}
    if objective == "orpo":
        out["log_odds_ratio"] = float(orpo_loss(logps, block.beta)[1].mean())
    return out


def kto_kl(kl_policy: torch.Tensor, kl_reference: torch.Tensor) -> torch.Tensor:
    """z0: the batch's KL estimate from mismatched completions, clamped at 0 (TRL and the paper)."""
    return (kl_policy - kl_reference).mean().clamp(min=0)


def kto_loss(logratio: torch.Tensor, labels: torch.Tensor, kl: torch.Tensor, block) -> torch.Tensor:
    """Mean over rows of the weighted KTO value loss; `logratio`: log pi - log ref per row, `labels` bool."""
    desirable = block.desirable_weight * (1 - torch.sigmoid(block.beta * (logratio - kl)))
    undesirable = block.undesirable_weight * (1 - torch.sigmoid(block.beta * (kl - logratio)))
    return torch.where(labels, desirable, undesirable).mean()


def kto_metrics(policy: torch.Tensor, reference: torch.Tensor, kl_policy: torch.Tensor, kl_reference: torch.Tensor,
                labels: torch.Tensor, prompts: list, block) -> dict:
    """Eval-set metrics of kto rows. reward_accuracy: share of (desirable, undesirable) row pairs with the same
    prompt where the desirable row's implicit reward beta * (log pi - log ref) is higher (over every desirable x
    undesirable combination when no prompt has both kinds: `accuracy_over`); `kl` the clamped KL estimate."""
    reward = block.beta * (policy - reference)
    kl = kto_kl(kl_policy, kl_reference)
    d_idx, u_idx = labels.nonzero().flatten().tolist(), (~labels).nonzero().flatten().tolist()
    combos = [(d, u) for d in d_idx for u in u_idx if prompts[d] == prompts[u]]
    over = "same_prompt" if combos else "all"
    combos = combos or [(d, u) for d in d_idx for u in u_idx]
    wins = [float(reward[d] > reward[u]) for d, u in combos]
    logp_wins = [float(policy[d] > policy[u]) for d, u in combos]
    mean = (lambda t: float(t.mean()) if t.numel() else 0.0)  # noqa: E731
    return {"loss": float(kto_loss(policy - reference, labels, kl, block)),
            "reward_accuracy": sum(wins) / len(wins) if wins else 0.0,
            "reward_margin": mean(reward[labels]) - mean(reward[~labels]), "kl": float(kl),
            "desirable_reward": mean(reward[labels]), "undesirable_reward": mean(reward[~labels]),
            "logp_accuracy": sum(logp_wins) / len(logp_wins) if logp_wins else 0.0,
            "desirable_logp": mean(policy[labels]), "undesirable_logp": mean(policy[~labels]),
            "accuracy_over": over, "compared": len(combos), "rows": int(labels.numel())}
