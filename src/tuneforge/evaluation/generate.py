"""Greedy batched generation for before/after comparisons, with the run's own chat template."""

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
    outputs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = move(dict(_batch(tokenizer, prompts[i : i + batch_size])), model_device(model))
            with autocast(precision):
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs
