"""Methods decide which parameters train. METHODS maps a name to `apply(model, method_cfg) -> model`;
COMPAT says which stages each method supports (checked before any model loads)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from tuneforge.errors import ConfigError
from tuneforge.methods import lora

METHODS: dict[str, Callable[..., nn.Module]] = {"lora": lora.apply}

COMPAT: dict[str, set[str]] = {"lora": {"sft", "pretrain"}}


def check_compat(method: str, stage: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"key 'method.name': unknown method {method!r}; known: {', '.join(sorted(METHODS))}")
    if stage not in COMPAT[method]:
        supported = ", ".join(sorted(COMPAT[method]))
        raise ConfigError(f"method {method!r} does not support stage {stage!r} (supported: {supported})")


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
