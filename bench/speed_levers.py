"""Step-speed levers tried for issue 19 item 2, measured side by side by bench/profile_step.py (docs/benchmarks.md,
"Where a step's time goes") and parity-tested in tests/unit/test_speed.py. Both keep parity (bit for bit; 1e-5 in
fp32) but gained nothing measurable in a step on the Xeon first measured (1.00-1.01x a LoRA step, within the noise).
Per-sample attention gained 1.07x a step on a Zen 4 under bf16 (session 13) and went into the library as
training.per_sample_attention (tuneforge/train/attention.py; `packed_attention` here is that). The frozen-weights
lever went into the library as training.frozen_bf16 (tuneforge/train/frozen.py) for the memory it saves once the
fp32 weights are dropped rather than kept aside (docs/benchmarks.md, "Memory"); `frozen_in_bf16` here keeps them
aside, as a step-time lever profile_step can toggle on one model. `compiled` is torch.compile as training.compile
runs it (tuneforge.train.compile), beside the static-shape variant it was measured against (docs/benchmarks.md,
"torch.compile"; parity in tests/unit/test_compile.py).

    with frozen_in_bf16(model): ...     # bf16 autocast over frozen linear weights held in bf16
    with packed_attention(model): ...   # SDPA per sample of a packed row instead of the row's masked N x N
    with compiled(model) as (runner, loss_fn): loss_fn(runner, batch)   # torch.compile, as training.compile does
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tuneforge.train.attention import per_sample_attention
from tuneforge.train.frozen import frozen_linear_params


class FrozenBf16:
    """The swap itself: `on()` puts bf16 copies of the chosen fp32 tensors in place (param.data), `off()` the
    original fp32 tensors back (kept aside, never re-widened from bf16, so off() restores them bit for bit)."""

    def __init__(self, model: nn.Module, head: bool = False) -> None:
        self.model, self.head = model, head
        self.params = frozen_linear_params(model)  # the library's choice (training.frozen_bf16)
        self.originals: list[torch.Tensor] = []
        self.head_swap: tuple[nn.Module, str, nn.Module] | None = None

    @property
    def count(self) -> int:
        return len(self.params) + (self.head_swap is not None)

    def on(self) -> None:
        if self.originals:
            return
        self.originals = [p.data for p in self.params]
        for p in self.params:
            p.data = p.data.to(torch.bfloat16)
        self.head_swap = _bf16_head(self.model) if self.head else None

    def off(self) -> None:
        for p, data in zip(self.params, self.originals, strict=True):
            p.data = data
        self.originals = []
        if self.head_swap is not None:
            parent, name, original = self.head_swap
            setattr(parent, name, original)
            self.head_swap = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        was_on = bool(self.originals)
        self.off()
        try:
            yield
        finally:
            if was_on:
                self.on()


@contextmanager
def frozen_in_bf16(model: nn.Module, head: bool = False) -> Iterator[FrozenBf16]:
    """Under bf16 autocast a linear layer's fp32 weight is cast to bf16 at every use, and autocast caches the
    cast only for tensors that require grad: a frozen base is re-cast at every forward of every micro-batch.
    Inside this context the frozen fp32 weights (and biases) of linear layers are bf16 tensors: the rounding
    autocast applies, done once, so forward and backward are unchanged (tested bit for bit). Trainable
    weights (LoRA A/B), embeddings and norms stay fp32, so the residual stream keeps its precision. Left alone:
    a weight shared with an embedding (a tied LM head: `head=True` gives the output layer a bf16 copy of its
    own for the duration) and DoRA's base layers (DoRA adds the base weight to the LoRA product outside a
    matmul). On exit every tensor is the fp32 one it was, so what is saved, merged or evaluated afterwards is
    unchanged. Only for code that runs under bf16 autocast: an fp32 forward would meet bf16 weights."""
    lever = FrozenBf16(model, head)
    lever.on()
    try:
        yield lever
    finally:
        lever.off()


def _frozen_fp32(p: torch.Tensor | None) -> bool:
    return p is not None and not p.requires_grad and p.dtype == torch.float32


def _bf16_head(model: nn.Module) -> tuple[nn.Module, str, nn.Module] | None:
    """(parent, attribute, original) after putting a frozen bf16 copy of the output layer in its place."""
    getter = getattr(model, "get_output_embeddings", None)
    out = getter() if getter else None
    if not isinstance(out, nn.Linear) or not _frozen_fp32(out.weight):
        return None
    for module in model.modules():
        for child_name, child in module.named_children():
            if child is out:
                copy = nn.Linear(out.in_features, out.out_features, bias=out.bias is not None,
                                 device=out.weight.device, dtype=torch.bfloat16).requires_grad_(False)
                with torch.no_grad():
                    copy.weight.copy_(out.weight)
                    if out.bias is not None:
                        copy.bias.copy_(out.bias)
                setattr(module, child_name, copy)
                return module, child_name, out
    return None


# per-sample attention over packed rows, as a lever profile_step can toggle on one model: the library's
# training.per_sample_attention (tuneforge/train/attention.py)
packed_attention = per_sample_attention


_COMPILED: dict[tuple[int, bool], nn.Module] = {}


@contextmanager
def compiled(model: nn.Module, padded_to: int = 0) -> Iterator[tuple[nn.Module, object]]:
    """torch.compile as the loop uses it (training.compile: tuneforge.train.compile, dynamic shapes), or, with
    `padded_to`, the alternative it was measured against: static graphs (dynamic=False), every packed row padded
    to a multiple of `padded_to` tokens and the kept (supervised) positions to a multiple of 128, so a handful of
    graphs serve every step. Yields (the module to call, the loss_sum to call it with); the wrapper is built once
    per model and kept (a new one would compile again), and shares the model's parameters."""
    from tuneforge.train.compile import compiled_forward
    from tuneforge.train.loss import loss_sum

    key = (id(model), bool(padded_to))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(model, dynamic=False) if padded_to else compiled_forward(model, lambda _m: None)
    yield _COMPILED[key], (lambda m, b: padded_loss_sum(m, b, padded_to)) if padded_to else loss_sum


def padded_loss_sum(model: nn.Module, batch, length: int, bucket: int = 128) -> torch.Tensor:
    """loss_sum over a packed row padded to a multiple of `length` (the padding is one more packed sample: its
    positions restart at 0, so no real token attends to it; its targets are ignored) with the kept positions
    padded to a multiple of `bucket` by ignored ones: the same loss, on a few fixed shapes."""
    import torch.nn.functional as F

    from tuneforge.data.templates import IGNORE

    n = batch.input_ids.shape[1]
    pad = -n % length
    ids = torch.cat([batch.input_ids, torch.zeros(1, pad, dtype=torch.long)], dim=1)
    pos = torch.cat([batch.position_ids, torch.arange(pad).unsqueeze(0)], dim=1)
    targets = torch.cat([batch.targets, torch.full((pad,), IGNORE, dtype=torch.long)])
    ignored = targets == IGNORE
    keep = (~ignored).nonzero().squeeze(1)
    extra = ignored.nonzero().squeeze(1)[: -keep.numel() % bucket]
    keep = torch.cat([keep, extra]).sort().values
    out = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=keep)
    return F.cross_entropy(out.logits[0].float(), targets[keep], reduction="sum")
