"""LoRA through peft: low-rank adapters on the chosen modules, base weights frozen."""

from __future__ import annotations

import peft
import torch.nn as nn

from tuneforge.config.schema import LoraConfig


def to_peft_config(mcfg: LoraConfig, task_type: str = "CAUSAL_LM") -> peft.LoraConfig:
    return peft.LoraConfig(
        r=mcfg.r,
        lora_alpha=mcfg.alpha,
        lora_dropout=mcfg.dropout,
        target_modules=mcfg.target_modules,
        bias=mcfg.bias,
        task_type=task_type,
    )


def apply(model: nn.Module, mcfg: LoraConfig) -> nn.Module:
    return peft.get_peft_model(model, to_peft_config(mcfg))
