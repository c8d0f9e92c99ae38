"""Greedy batched generation for before/after comparisons, with the run's own chat template.

Prompts are left-padded into batches. A model that prepends virtual input tokens (peft prompt tuning, p-tuning)
puts them before the padding, and peft ignores position ids there, so a padded prompt would sit further from its
virtual tokens than it does alone and be continued differently: such a model is given batches of prompts of one
length only (tests/evaluation/test_generate_virtual_tokens.py). Prefix tuning's keys and values follow the
padding mask and keep mixed batches.
"""

from __future__ import annotations

import torch

from tuneforge.device import model_device, move
from tuneforge.train.precision import autocast


def _batch(tokenizer, prompts: list[str] | list[list[int]]) -> dict[str, torch.Tensor]:
    """Left-padded input ids and attention mask (decoder-only generation continues from the right edge)."""
    if all(isinstance(p, str) for p in prompts):
        return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [[pad] * (width - len(p)) + list(p) for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str] | list[list[int]], max_new_tokens: int, precision: str,
             batch_size: int = 8) -> list[str]:
    """`prompts`: token ids as training built them (GenerationItem.prompt_ids: control tokens written in a row stay
    plain text), or rendered text (template + generation prompt), tokenized here with its control tokens special.
    Returns the new text only."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    outputs: dict[int, str] = {}
    try:
        for group in _groups(model, tokenizer, prompts, batch_size):
            enc = move(dict(_batch(tokenizer, [prompts[j] for j in group])), model_device(model))
            with autocast(precision):
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            outputs.update(zip(group, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [outputs[j] for j in range(len(prompts))]


def prepends_virtual_inputs(model) -> bool:
    """A peft model whose method prepends trained embeddings to the input (prompt tuning, p-tuning): not prefix
    tuning, whose virtual keys and values follow the padding mask."""
    config = getattr(model, "active_peft_config", None)
    if not getattr(config, "is_prompt_learning", False):
        return False
    from peft import PeftType

    return config.peft_type != PeftType.PREFIX_TUNING


def _groups(model, tokenizer, prompts: list[str] | list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of `prompts` in generation batches: consecutive runs of `batch_size`, or, for a model that prepends
    virtual inputs, batches of prompts of one token length (in order of first appearance)."""
    if not prepends_virtual_inputs(model):
        return [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    by_length: dict[int, list[int]] = {}
    for j, p in enumerate(prompts):
        n = len(p) if not isinstance(p, str) else len(tokenizer(p, add_special_tokens=False)["input_ids"])
        by_length.setdefault(n, []).append(j)
    return [same[i : i + batch_size] for same in by_length.values() for i in range(0, len(same), batch_size)]
