"""What a method is: how it changes a model, which stages it supports, and what the rest of tuneforge
must know about it (batching, quantized loading, merging, saving)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn


@dataclass(frozen=True)
class MethodContext:
    model_path: str  # resolved local path of the base (prompt tuning's text init reads its tokenizer)
    task_type: str = "CAUSAL_LM"
    gradient_checkpointing: bool = False
    # Newly initialised modules that must train whatever the method (a classification head); peft's
    # SEQ_CLS task adds them to modules_to_save itself.
    head_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Method:
    apply: Callable[[nn.Module, object, MethodContext], nn.Module]
    stages: frozenset[str]
    # Prompt learning prepends virtual tokens per row, so samples cannot share a packed row.
    packing: bool = True
    quantized_base: bool = False  # load the base 4-bit NF4 (qlora)
    mergeable: bool = False  # `tuneforge merge` folds the adapter into the base
    # How the run stores the result; default `model.save_pretrained` (peft adapter or full model).
    save: Callable[[nn.Module, Path], None] | None = None
    why_not_mergeable: str = ""
