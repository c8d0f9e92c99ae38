"""Sample completions from a policy and score their tokens: the rollout half of ppo and the before/after
evaluation of ppo and grpo.

    samples = sample(model, tokenizer, examples, cfg.ppo, seed=7, batch_size=8, precision="bf16")
    samples = sample(..., stop=stop_signal)    # Stopped within one generation step of a signal
    batch = to_batch(samples, tokenizer.pad_token_id)       # prompts left-padded, completions right-padded
    logp = logprobs_of(model, batch, temperature=1.0)      # [B, C] log-probs of the completion tokens

A completion ends at (and includes) its first EOS: the model learns to stop. With pad == eos, what generate
pads after it is cut by position, never mistaken for the answer. In a batch every prompt ends at the same
column, so the logits of the completion region alone are computed (`logits_to_keep`), and position ids follow
the attention mask, as in generation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tuneforge.config.schema import SamplingConfig
from tuneforge.train.precision import autocast, bf16_weights


class Stopped(Exception):
    """A stop was asked for (SIGINT / SIGTERM) while sampling or scoring: what was being built is abandoned."""


def check_stop(stop: Callable[[], object] | None) -> None:
    """Stopped if `stop()` says so (a signal arrived): called between the pieces of work a stop may cut."""
    if stop is not None and stop():
        raise Stopped


class _StopWhen(StoppingCriteria):
    """Ends generate after the token being generated when `stop()` says so (checked once per step)."""

    def __init__(self, stop: Callable[[], object]) -> None:
        self.stop = stop

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), bool(self.stop()), dtype=torch.bool, device=input_ids.device)


@dataclass
class Sample:
    prompt_ids: list[int]
    completion_ids: list[int]  # through the first EOS when one was generated
    completion: str  # decoded, special tokens skipped


@dataclass
class SampleBatch:
    input_ids: torch.Tensor  # [B, P + C]
    attention_mask: torch.Tensor  # [B, P + C]
    position_ids: torch.Tensor  # [B, P + C]
    completion_mask: torch.Tensor  # [B, C] bool: real completion tokens
    prompt_width: int  # P

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]


def _cut(ids: list[int], eos_id: int | None) -> list[int]:
    if eos_id is not None and eos_id in ids:
        return ids[: ids.index(eos_id) + 1]
    return ids


@torch.no_grad()
def sample(model, tokenizer, examples: list, sampling: SamplingConfig, *, seed: int | None, batch_size: int,
           precision: str, greedy: bool = False, stop: Callable[[], object] | None = None) -> list[Sample]:
    """One completion per example. `seed` makes the draw reproducible without touching the global RNG. When
    `stop()` turns true, generation ends after the current token and Stopped is raised (nothing is returned).
    Under bf16 the frozen linear weights are held as their bf16 casts meanwhile (the same logits, so the same
    draws, without autocast casting them again at every decoding step)."""
    was_training = model.training
    model.eval()  # no dropout while sampling
    out: list[Sample] = []
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    criteria = {"stopping_criteria": StoppingCriteriaList([_StopWhen(stop)])} if stop else {}
    try:
        with torch.random.fork_rng(devices=[]), bf16_weights(model, precision):
            if seed is not None:
                torch.manual_seed(seed)
            for i in range(0, len(examples), batch_size):
                prompts = [e.input_ids for e in examples[i : i + batch_size]]
                width = max(map(len, prompts))
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
                # explicit, so a model's generation_config defaults (e.g. top_k 50) do not change the draw;
                # top_k 0 turns top-k off (transformers 5.23)
                extra = {} if greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p,
                                           "top_k": sampling.top_k}
                with autocast(precision):
                    generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=not greedy,
                                               max_new_tokens=sampling.max_new_tokens, use_cache=True,
                                               pad_token_id=pad, eos_token_id=eos, **extra, **criteria)
                check_stop(stop)
                for p, row in zip(prompts, generated[:, width:].tolist(), strict=True):
                    completion = _cut(row, eos)
                    out.append(Sample(p, completion, tokenizer.decode(completion, skip_special_tokens=True)))
    finally:
        model.train(was_training)
    return out


def to_batch(samples: list[Sample], pad_id: int) -> SampleBatch:
    width = max(len(s.prompt_ids) for s in samples)
    c_width = max(max(len(s.completion_ids) for s in samples), 1)
    rows, masks, comp = [], [], []
    for s in samples:
        left, right = width - len(s.prompt_ids), c_width - len(s.completion_ids)
        rows.append([pad_id] * left + s.prompt_ids + s.completion_ids + [pad_id] * right)
        masks.append([0] * left + [1] * (len(s.prompt_ids) + len(s.completion_ids)) + [0] * right)
        comp.append([True] * len(s.completion_ids) + [False] * right)
    attention_mask = torch.tensor(masks)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers a left-padded prompt
    return SampleBatch(torch.tensor(rows), attention_mask, position_ids, torch.tensor(comp), width)


def completion_logits(model, batch: SampleBatch, output_hidden_states: bool = False):
    """The model output over the completion region: logits [B, C, V] predicting each completion token
    (position t's logits predict token t + 1), and with `output_hidden_states` the last hidden states."""
    c_width = batch.completion_mask.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=False, logits_to_keep=c_width + 1, output_hidden_states=output_hidden_states)
    return out.logits[:, :-1], out


def logprobs_of(model, batch: SampleBatch, temperature: float = 1.0) -> torch.Tensor:
    """[B, C] log-probs of the completion tokens under `model` at the sampling temperature (0 at padding).
    Differentiable when grad is enabled; the caller sets train / eval mode and autocast."""
    logits, _ = completion_logits(model, batch)
    return gather_logprobs(logits, batch, temperature)


def gather_logprobs(logits: torch.Tensor, batch: SampleBatch, temperature: float = 1.0) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    taken = logp.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    return taken * batch.completion_mask


@torch.no_grad()
def completion_logprobs(model, samples: list[Sample], batch_size: int, precision: str, pad_id: int = 0,
                        temperature: float = 1.0) -> list[torch.Tensor]:
    """Per-sample log-probs of each completion's tokens (a list: lengths differ); frozen weights held in bf16
    under bf16, as in `sample`."""
    out: list[torch.Tensor] = []
    with bf16_weights(model, precision):
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            batch = to_batch(chunk, pad_id)
            with autocast(precision):
                logp = logprobs_of(model, batch, temperature)
            out += [row[: len(s.completion_ids)].float() for row, s in zip(logp, chunk, strict=True)]
    return out
