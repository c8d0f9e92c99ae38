"""Attention per packed sample (training.per_sample_attention).

A packed row holds several samples; transformers' SDPA attends over it with a block-diagonal causal mask built
from the restarting position ids, and SDPA on the CPU computes the whole row's N x N scores, even where the mask
zeroes them. Here each sample attends causally to itself alone (SDPA with is_causal over its own slice): the same
attention, without the masked-out work. Measured on the benchmark's LoRA SFT of the embedded default
(bench/profile_step.py --levers bf16,packed-attn, 5 interleaved rounds, bf16 autocast, 2 threads, Zen 4):
1.07x a step at batch 4 and at batch 8 (docs/benchmarks.md). Anything else (a padding mask, a KV cache, several
rows, a bidirectional encoder) goes to transformers' SDPA unchanged, so the switch is safe around any forward.

    with per_sample_attention(model): ...   # inside: packed rows attend per sample; SDPA again after
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tuneforge.config.schema import TrainingConfig

PACKED_SDPA = "tuneforge_packed_sdpa"


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA per sample of a packed row (positions restart at 0 where a sample starts); else transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    positions = kwargs.pop("position_ids", None)
    n = query.shape[2]
    if attention_mask is not None or positions is None or query.shape[0] != 1 or key.shape[2] != n \
            or positions.shape[-1] != n or not getattr(module, "is_causal", False):  # an encoder attends both ways
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    starts = (positions.reshape(-1) == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    bounds = [*starts, n]
    outs = [sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, dropout,
                                   scaling, is_causal=True)[0] for s, e in zip(bounds, bounds[1:], strict=False)]
    return torch.cat(outs, dim=1), None


def _packed_mask(*args, **kwargs):
    """No mask where the rows have no padding (the attention splits the packed row by its positions); the usual
    SDPA mask otherwise, which sends the attention to transformers' SDPA."""
    from transformers.masking_utils import flash_attention_mask, sdpa_mask

    return None if flash_attention_mask(*args, **kwargs) is None else sdpa_mask(*args, **kwargs)


def per_sample_attention_applies(t: TrainingConfig) -> bool:
    """training.per_sample_attention (`t`: the training block), except under torch.compile (the split by positions
    reads them on the host: a graph break in every layer)."""
    return t.per_sample_attention and not t.compile


@contextmanager
def per_sample_attention(model: nn.Module, on: bool = True) -> Iterator[bool]:
    """Inside: a model on transformers' SDPA attends per packed sample. Yields whether that is so. Other attention
    implementations are left alone; nested (already switched), it changes nothing and leaves the switch to the
    outer one; on exit the model is on SDPA again."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if not on or impl != "sdpa":
        yield impl == PACKED_SDPA
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_SDPA, _packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, _packed_mask)
    model.set_attn_implementation(PACKED_SDPA)
    try:
        yield True
    finally:
        model.set_attn_implementation("sdpa")
