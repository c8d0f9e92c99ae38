"""What a method is: how it changes a model, which stages it supports, how a run it trained loads back,
and what the rest of tuneforge must know about it (batching, quantized loading, merging, saving, its
starting learning rate), so nothing outside methods/ asks for a method by name."""

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


# Loads a model with the class and options the run's stage needs (causal LM, or classifier with its labels):
# `load_base(None)` is the run's base model, `load_base(path)` a directory that holds a whole model.
LoadBase = Callable[[str | None], nn.Module]


@dataclass(frozen=True)
class Method:
    apply: Callable[[nn.Module, object, MethodContext], nn.Module]
    stages: frozenset[str]
    # `load(load_base, run_dir)`: the model a finished run saved (adapter on its base, or the whole model).
    load: Callable[[LoadBase, Path], nn.Module]
    # The rate of a run that gives no training.learning_rate on a supervised stage (sft, pretrain, classify), and
    # of the methods `tuneforge compare` switches to; chosen by bench/defaults_study.py (docs/defaults.md).
    default_lr: float
    # Prompt learning prepends virtual tokens per row, so samples cannot share a packed row.
    packing: bool = True
    quantized_base: bool = False  # load the base 4-bit NF4 (qlora)
    mergeable: bool = False  # `tuneforge merge` folds the adapter into the base
    # The run directory is a whole model (full / freeze): nothing to merge, chain or export from but itself.
    saves_whole_model: bool = False
    # How the run stores the result; default `model.save_pretrained` (peft adapter or full model).
    save: Callable[[nn.Module, Path], None] | None = None
    why_not_mergeable: str = ""
    # The open rate on a preference / RL / reward stage (one pass over pairs or prompts, a reference model to stay
    # near), where the defaults study did not measure: None means default_lr.
    pairs_lr: float | None = None
    # The LR schedule of a supervised run that names no training.lr_scheduler (train/recipe.py); None: the schema's
    # (cosine after 3% warmup). "constant" (no warmup) where the defaults study found it learns more in the same
    # steps (LoRA: docs/defaults-zen4.md; full fine-tuning: docs/defaults-full-schedule.md; the others:
    # docs/defaults-methods.md), which is every method today but bottleneck adapters
    # (docs/defaults-methods-quickstart.md).
    default_schedule: str | None = None
