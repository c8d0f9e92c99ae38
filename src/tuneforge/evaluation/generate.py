"""Greedy batched generation for before/after comparisons, with the run's own chat template."""

from __future__ import annotations

import torch

from tuneforge.train.precision import autocast


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, precision: str, batch_size: int = 8) -> list[str]:
    """`prompts` are already rendered text (template + generation prompt). Returns the new text only."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    outputs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
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
