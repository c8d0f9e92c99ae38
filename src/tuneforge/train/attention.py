"""Attention per packed sample (training.per_sample_attention).

A packed row holds several samples; transformers' SDPA attends over it with a block-diagonal causal mask built
from the restarting position ids, and SDPA on the CPU computes the whole row's N x N scores, even where the mask
zeroes them. Here each sample attends causally to itself alone (SDPA with is_causal over its own slice): the same
attention, without the masked-out work. Measured on the benchmark's LoRA SFT of the embedded default
(bench/profile_step.py --levers bf16,packed-attn, 5 interleaved rounds, bf16 autocast, 2 threads, Zen 4):
1.07x a step at batch 4 and at batch 8 (docs/benchmarks.md). Anything else (a padding mask, a KV cache, several
rows, a bidirectional encoder) goes to transformers' SDPA unchanged, so the switch is safe around any forward.

On the CPU, a bf16 / fp16 sample of at most SHORT_SAMPLE_TOKENS attends through plain ops (scores, causal mask,
softmax, weighted sum: `_short_sample_attention`) rather than SDPA's flash kernel, whose fixed blocks cost more
than the work at these lengths: fwd + bwd of the 135M model's attention (9 heads, 3 KV heads, head dim 64), one
thread, bf16, idle Zen 4 (bench/attention_kernels.py): 2.07x faster on four samples of 110-150 tokens, 1.53x on
two of ~255, 1.26x on one of 500 (the gain falls with length and the probabilities it keeps for the backward grow
as L^2, hence the cap); a LoRA step 1.14x at batch 4 and 8, the benchmark's whole process 1.13x
(docs/benchmarks.md). Its error against an fp32 reference is that of the bf16 flash kernel (~5e-3 relative). fp32
samples keep SDPA, which is faster there.

    with per_sample_attention(model): ...   # inside: packed rows attend per sample; SDPA again after
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tuneforge.config.schema import TrainingConfig

PACKED_SDPA = "tuneforge_packed_sdpa"
SHORT_SAMPLE_TOKENS = 256  # bf16 samples up to this length attend through plain ops on the CPU (see above)


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA per sample of a packed row (positions restart at 0 where a sample starts); else transformers' SDPA.
    A sliding-window layer (Mistral, Qwen2, Gemma's local layers: `sliding_window` in kwargs) keeps its window:
    the mask this implementation registers has none when the rows have no padding. The row is split once (one
    concatenation in the backward, where slicing each sample builds a zero row per sample); when every sample
    takes the short path, the row is scaled and cast to bf16 once, not once per sample."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    positions = kwargs.pop("position_ids", None)
    window = kwargs.get("sliding_window")
    n, causal = query.shape[2], getattr(module, "is_causal", False)  # an encoder attends both ways
    packed = attention_mask is None and positions is not None and query.shape[0] == 1 and key.shape[2] == n \
        and positions.shape[-1] == n and causal
    starts = (positions.reshape(-1) == 0).nonzero().flatten().tolist() if packed else []
    if not starts or starts[0] != 0:  # not a packed row: transformers' SDPA, with the window where no mask has it
        if attention_mask is None and window is not None and key.shape[2] > window and causal:
            attention_mask = _window_mask(n, key.shape[2], window, query.device)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    sizes = [e - s for s, e in zip(starts, [*starts[1:], n], strict=True)]
    longest = max(sizes)
    dtype = _short_path_dtype(query, key, dropout, longest) if window is None or longest <= window else None
    if dtype is not None:  # every sample short (and within the window): the row cast and scaled once
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        with torch.autocast(query.device.type, enabled=False):
            parts = zip(*(torch.split(t, sizes, dim=2) for t in ((query * scale).to(dtype), key.to(dtype),
                                                                value.to(dtype))), strict=True)
            return torch.cat([_short_sample_attention(q, k, v, 1.0, dtype) for q, k, v in parts], dim=1), None
    # one split (its backward is one concatenation; slicing each sample would build a zero row per sample)
    parts = zip(*(torch.split(t, sizes, dim=2) for t in (query, key, value)), strict=True)
    return torch.cat([_sample_attention(module, q, k, v, dropout, scaling, window) for q, k, v in parts], dim=1), None


def _window_mask(q_length: int, kv_length: int, window: int, device: torch.device) -> torch.Tensor:
    """(1, 1, q, kv) bool, True where query i (the last q_length of kv_length positions) sees key j: j <= i and
    j > i - window, as transformers' sliding-window causal mask."""
    i = torch.arange(kv_length - q_length, kv_length, device=device)[:, None]
    j = torch.arange(kv_length, device=device)[None, :]
    return ((j <= i) & (j > i - window))[None, None]


def _sample_attention(module, query, key, value, dropout, scaling, window: int | None = None) -> torch.Tensor:
    """One sample's causal attention (within `window` tokens back where a window is given), (batch, length,
    heads, head_dim) as transformers' SDPA returns it."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    if window is not None and length > window:  # a sample longer than the window: SDPA under a banded mask
        return sdpa_attention_forward(module, query, key, value, _window_mask(length, length, window, query.device),
                                      dropout, scaling, is_causal=False)[0]
    dtype = _short_path_dtype(query, key, dropout, length)
    if dtype is not None:
        return _short_sample_attention(query, key, value, scaling, dtype)
    return sdpa_attention_forward(module, query, key, value, None, dropout, scaling, is_causal=True)[0]


def _short_path_dtype(query: torch.Tensor, key: torch.Tensor, dropout: float, length: int) -> torch.dtype | None:
    """The dtype samples of up to `length` tokens attend in through the plain-ops path, or None where SDPA keeps
    them: another device than the CPU (SDPA's kernels), fp32, dropout, longer than SHORT_SAMPLE_TOKENS, or query
    heads that do not group evenly over the key heads."""
    dtype = _half_dtype(query) if query.device.type == "cpu" else None
    ok = dtype is not None and not dropout and length <= SHORT_SAMPLE_TOKENS and query.shape[1] % key.shape[1] == 0
    return dtype if ok else None


def _half_dtype(query: torch.Tensor) -> torch.dtype | None:
    """The dtype SDPA would compute in, if it is bf16 / fp16: autocast's (under autocast the rotary embedding
    leaves queries and keys in fp32 and SDPA casts them), else the query's own."""
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def _short_sample_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None,
                            dtype: torch.dtype) -> torch.Tensor:
    """Causal attention by plain ops in `dtype` (grouped-query heads without copying the keys: each key head
    meets its group of query heads in one matmul); softmax accumulates in fp32 inside the kernel. Outside
    autocast, so the ops stay in `dtype`."""
    b, heads, length, dim = query.shape
    groups = key.shape[1]
    scale = dim ** -0.5 if scaling is None else scaling
    with torch.autocast(query.device.type, enabled=False):
        scaled = query if scale == 1.0 else query * scale  # 1.0: the caller scaled the row
        grouped = scaled.to(dtype).reshape(b, groups, heads // groups * length, dim)
        key, value = key.to(dtype), value.to(dtype)
        scores = torch.matmul(grouped, key.transpose(-1, -2)).view(b, groups, heads // groups, length, length)
        # in place: a matmul's backward needs its inputs, not its output
        probs = torch.softmax(scores.masked_fill_(_future(length, query.device), float("-inf")), dim=-1)
        out = torch.matmul(probs.view(b, groups, heads // groups * length, length), value)
    return out.view(b, heads, length, dim).transpose(1, 2)


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


@functools.lru_cache(maxsize=64)
def _future(length: int, device: torch.device) -> torch.Tensor:
    """The causal mask of a sample of `length` tokens (True where a key lies after its query), shared by every
    layer and step that sees that length."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu_(1)
