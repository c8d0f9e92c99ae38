"""Greedy batched generation for before/after comparisons, with the run's own chat template.

A decoding step reads every weight once whatever the batch, so a step's cost barely grows with its rows: the
prompts are sorted by token length (less padding) and put in batches as large as a memory budget for the KV
cache and the prefill's attention scores allows (a quarter of the device's free memory, at least KV_BUDGET; at
most MAX_ROWS rows, and never fewer than MIN_ROWS, the fixed batch before); a caller may cap the rows.
On the embedded default's 40 quickstart prompts (bench/generation.py) one batch of 40 instead of five of 8 is the
difference between about 10 and 26 s at fp32. Under bf16 autocast the frozen fp32 linear weights are held as
their bf16 casts while generating (train/precision.py's `bf16_weights`): autocast would cast each of them again at
every step, and the cast it skips is the one it would have made, so the tokens are the same
(tests/evaluation/test_generate_batches.py).

Prompts are left-padded. A model that prepends virtual input tokens (peft prompt tuning, p-tuning) puts them
before the padding, and peft ignores position ids there, so a padded prompt would sit further from its virtual
tokens than it does alone and be continued differently: such a model is given batches of prompts of one length
only (tests/evaluation/test_generate_virtual_tokens.py). Prefix tuning's keys and values follow the padding mask
and keep mixed batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tuneforge.device import model_device, move
from tuneforge.train.precision import autocast, bf16_weights, free_bytes

MAX_ROWS = 64
MIN_ROWS = 8  # the fixed batch of session 18: a batch may always be this large, whatever the estimate says
KV_BUDGET = 1 << 30  # bytes one batch's KV cache and prefill attention scores may take, at least


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
             batch_size: int | None = None, on_batch: Callable[[int], None] | None = None) -> list[str]:
    """`prompts`: token ids as training built them (GenerationItem.prompt_ids: control tokens written in a row stay
    plain text), or rendered text (template + generation prompt), tokenized here with its control tokens special.
    `batch_size`: at most that many rows a batch (None: as the memory budget allows); `on_batch(rows)` after each
    batch. Returns the new text only, in the prompts' order."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    outputs: dict[int, str] = {}
    try:
        with bf16_weights(model, precision):
            for group in _groups(model, tokenizer, prompts, batch_size, max_new_tokens):
                enc = move(dict(_batch(tokenizer, [prompts[j] for j in group])), model_device(model))
                with autocast(precision):
                    out = model.generate(
                        **enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    )
                new = out[:, enc["input_ids"].shape[1] :]
                outputs.update(zip(group, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True))
                if on_batch:
                    on_batch(len(group))
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


def row_bytes(model, length: int) -> int:
    """Memory one row of `length` tokens (prompt + new) takes while generating: its KV cache (counted at fp32:
    rotary keys come out of autocast in fp32) and its prefill attention scores."""
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    layers = getattr(config, "num_hidden_layers", None) or 32
    heads = getattr(config, "num_attention_heads", None) or 32
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (getattr(config, "hidden_size", 4096) // heads)
    return 4 * length * (layers * 2 * kv_heads * head_dim + heads * length)


def _groups(model, tokenizer, prompts: list[str] | list[list[int]], batch_size: int | None,
            max_new_tokens: int = 0) -> list[list[int]]:
    """Indices of `prompts` in generation batches, shortest prompts first: each batch as many rows as
    `batch_size`, MAX_ROWS and the memory budget allow (MIN_ROWS always, unless `batch_size` is less), and for a
    model that prepends virtual inputs, prompts of one token length only."""
    lengths = [len(p) if not isinstance(p, str) else len(tokenizer(p, add_special_tokens=False)["input_ids"])
               for p in prompts]
    cap = min(batch_size or MAX_ROWS, MAX_ROWS)
    budget = max(KV_BUDGET, free_bytes(model) // 4)
    one_length = prepends_virtual_inputs(model)
    groups: list[list[int]] = []
    for j in sorted(range(len(prompts)), key=lambda k: lengths[k]):
        group = groups[-1] if groups else []
        rows = len(group) + 1
        fits = group and rows <= cap and (rows <= MIN_ROWS
                                          or rows * row_bytes(model, lengths[j] + max_new_tokens) <= budget)
        if fits and not (one_length and lengths[group[0]] != lengths[j]):
            group.append(j)
        else:
            groups.append([j])
    return groups
