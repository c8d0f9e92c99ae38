"""Methods decide which parameters train. METHODS maps a name to its `Method` (apply, stages, and what the
rest of tuneforge needs: load, default learning rate, merging, saving); `check_compat` is the method x stage
table, checked before a model loads.

    model = METHODS[cfg.method.name].apply(model, cfg.method, MethodContext(model_path))
"""

from __future__ import annotations

import torch.nn as nn

from tuneforge.errors import ConfigError
from tuneforge.methods import adapter, freeze, peft_methods
from tuneforge.methods.base import LoadBase, Method, MethodContext

LM = frozenset({"sft", "pretrain"})
# Classification (and a reward model: one scalar output) trains a new head on top of the base: every
# method here trains (and saves) it too. qlora/adapter/prefix are left out: untested with such a head.
LM_AND_CLS = LM | {"classify", "reward"}
# Preference / RL stages need a reference model. PEFT methods get it for free (the adapter disabled);
# full / freeze get a frozen copy from TRL (dpo, grpo); tuneforge's own PPO supports only the adapter case.
# kto has dpo's reference; orpo / simpo / cpo need none, and take the same methods.
PREFERENCE = frozenset({"kto", "orpo", "simpo", "cpo"})
RL_PEFT = frozenset({"dpo", "ppo", "grpo"}) | PREFERENCE
RL_COPY = frozenset({"dpo", "grpo"}) | PREFERENCE

# default_lr: the rate of a run that gives no training.learning_rate on a supervised stage; pairs_lr on a
# preference / RL / reward stage (train/recipe.py default_rate; compare's switched methods). LoRA: docs/defaults.md;
# freeze, IA3, adapter, prefix and prompt (rates and constant schedules): docs/defaults-methods.md, where the old rate
# stays as pairs_lr (the preference and RL stages were not measured); IA3 1e-2 (not the 3e-2 facts preferred):
# docs/defaults-methods-quickstart.md, where 3e-2 fell 0.17 short on the quickstart task; adapters keep the schema's
# cosine there (a constant rate: 0.16 short on quickstart, 0.008 ahead on facts); prompt tuning 1e-1 (session 18: the
# smallest worst shortfall over facts, classification and quickstart, 0.063; 3e-1 fell 0.17 short on quickstart)
METHODS: dict[str, Method] = {
    "full": Method(freeze.apply_full, LM_AND_CLS | RL_COPY, freeze.load_whole, default_lr=5e-5, saves_whole_model=True,
                   why_not_mergeable="full fine-tuning already saves a whole model", default_schedule="constant"),
    "freeze": Method(freeze.apply_freeze, LM_AND_CLS | RL_COPY, freeze.load_whole, default_lr=3e-4, pairs_lr=1e-4,
                     saves_whole_model=True, why_not_mergeable="partial fine-tuning already saves a whole model",
                     default_schedule="constant"),
    "lora": Method(peft_methods.apply_lora, LM_AND_CLS | RL_PEFT, peft_methods.load_peft, default_lr=2e-3,
                   pairs_lr=2e-4, mergeable=True, save=peft_methods.save_lora, default_schedule="constant"),
    "qlora": Method(peft_methods.apply_qlora, LM | RL_PEFT, peft_methods.load_peft, default_lr=2e-3,
                    pairs_lr=2e-4, quantized_base=True, mergeable=True, default_schedule="constant"),
    "ia3": Method(peft_methods.apply_ia3, LM_AND_CLS | RL_PEFT, peft_methods.load_peft, default_lr=1e-2,
                  pairs_lr=3e-3, mergeable=True, default_schedule="constant"),
    "adapter": Method(adapter.apply_adapter, LM, adapter.load_run, default_lr=1e-3, save=adapter.save,
                      why_not_mergeable="a bottleneck adapter has a non-linearity; it cannot fold into a weight"),
    "prefix": Method(peft_methods.apply_prefix, LM, peft_methods.load_peft, default_lr=3e-2, packing=False,
                     why_not_mergeable="prefix tuning adds key/value prefixes, not weight deltas",
                     default_schedule="constant"),
    "prompt": Method(peft_methods.apply_prompt, LM_AND_CLS, peft_methods.load_peft, default_lr=1e-1, packing=False,
                     why_not_mergeable="prompt tuning adds virtual input tokens, not weight deltas",
                     default_schedule="constant"),
}

__all__ = ["METHODS", "LoadBase", "Method", "MethodContext", "check_compat", "count_params"]


def check_compat(method: str, stage: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"key 'method.name': unknown method {method!r}; known: {', '.join(METHODS)}")
    if stage not in METHODS[method].stages:
        supported = ", ".join(sorted(METHODS[method].stages))
        raise ConfigError(f"method {method!r} does not support stage {stage!r} (supported: {supported})")


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as their logical size."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if hasattr(model, "get_nb_trainable_parameters"):  # peft knows the logical size of 4-bit weights
        return trainable, model.get_nb_trainable_parameters()[1]
    return trainable, sum(p.numel() for p in model.parameters())
