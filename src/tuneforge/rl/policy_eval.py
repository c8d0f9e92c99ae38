"""Before / after evaluation of an RL stage: sample the eval prompts (seeded, at the training temperature),
score the completions, and measure how far the policy moved from its reference.

    result = evaluate_policy(model, tokenizer, examples, rewards, cfg.ppo, reference=model.disable_adapter,
                             seed=cfg.seed, batch_size=8, precision="bf16")

KL is the sampled estimate of KL(policy || reference) per completion: the sum over the completion's tokens of
log p_policy - log p_reference, on the policy's own samples, averaged over samples (0 before training, when
the policy is the reference). `reference` is a zero-argument context-manager factory under which `model`
computes reference log-probs (the RL stages: rl.reference.InitialPolicy, the initial policy; a reloaded peft
run: `model.disable_adapter`), or None when there is none.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from tuneforge.config.schema import SamplingConfig
from tuneforge.rl.rewards import Rewards
from tuneforge.rl.sampling import completion_logprobs, sample


def evaluate_policy(model, tokenizer, examples: list, rewards: Rewards, sampling: SamplingConfig, *,
                    reference: Callable[[], AbstractContextManager] | None, seed: int, batch_size: int,
                    precision: str, keep_samples: int = 8) -> dict:
    samples = sample(model, tokenizer, examples, sampling, seed=seed, batch_size=batch_size, precision=precision)
    completions = [s.completion for s in samples]
    parts = rewards.breakdown(examples, completions)
    total = rewards.combine(parts)
    kl = torch.zeros(len(samples))
    if reference is not None:
        was_training = model.training
        model.eval()
        pad = tokenizer.pad_token_id
        policy = completion_logprobs(model, samples, batch_size, precision, pad, sampling.temperature)
        with reference():
            ref = completion_logprobs(model, samples, batch_size, precision, pad, sampling.temperature)
        model.train(was_training)
        kl = torch.tensor([float((p - r).sum()) for p, r in zip(policy, ref, strict=True)])
    result = {
        "reward_mean": float(total.mean()),
        "reward_std": float(total.std()) if len(total) > 1 else 0.0,
        "kl_mean": float(kl.mean()),
        "length_mean": sum(len(s.completion_ids) for s in samples) / len(samples),
        "samples": [{"prompt": e.text, "completion": c, "reward": float(r)}
                    for e, c, r in zip(examples[:keep_samples], completions, total.tolist(), strict=False)],
    }
    if len(parts) > 1:
        result["rewards"] = {name: float(v.mean()) for name, v in parts.items()}
    return result
