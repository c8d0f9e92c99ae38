"""Which layers LoRA / QLoRA / IA3 adapt. `target_modules: null` (the default) means "per architecture":
peft's own mapping for the model type (Llama: q_proj, v_proj; BERT: query, value; ...), else every linear
layer of the attention. A list is checked against the model before peft sees it: a name that matches no
layer is a ConfigError naming the model's linear layers (peft would stop with NoMatchingPeftModuleError).

    targets = lora_targets(model, mcfg.target_modules)        # a list, or "all-linear"
"""

from __future__ import annotations

import torch.nn as nn

from tuneforge.errors import ConfigError
from tuneforge.methods.peft_import import load_peft_module

ATTENTION = ("self_attn", "attention", "attn", "self_attention")


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2 style projections


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (what `target_modules` entries match)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if name and _is_linear(m)})


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # peft's rule for a list of names


def check_targets(model: nn.Module, targets: list[str], key: str = "method.target_modules") -> None:
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(_matches(n, t) for n in names)]
    if missing:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ConfigError(f"key {key!r}: {', '.join(missing)} match no layer of this {kind} model; its linear layers "
                          f"are: {', '.join(linear_names(model))} (or use all-linear, or leave the key out for the "
                          "architecture's default)")


def _attention_linears(model: nn.Module) -> list[str]:
    """The linear layers inside the first block's attention, named from the block down (precise suffixes)."""
    for name, module in model.named_modules():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-1] in ATTENTION and parts[-2].isdigit():
            return sorted(f"{parts[-1]}.{sub}" for sub, m in module.named_modules() if sub and _is_linear(m))
    return []


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def default_lora_targets(model: nn.Module) -> list[str]:
    constants = load_peft_module().utils.constants  # peft imports for seconds; validate never asks for targets
    mapped = constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(_model_type(model))
    targets = list(mapped) if mapped else _attention_linears(model)
    if not targets:
        raise ConfigError(f"key 'method.target_modules': no default for this {_model_type(model)} model (peft has "
                          f"none and no attention block was found); name its layers, e.g. from: "
                          f"{', '.join(linear_names(model))}")
    return targets


def _backbone_linears(model: nn.Module) -> list[str]:
    """all-linear for a classifier: the backbone's linear layers, not the new head. (peft's all-linear would
    also wrap the head, which SEQ_CLS keeps whole in modules_to_save, and get_peft_model fails: peft 0.21.2.)"""
    backbone = getattr(model, "base_model", model)
    inside = {id(m) for m in backbone.modules()}
    head = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m) and id(m) not in inside}
    return [n for n in linear_names(backbone) if n not in head]


def lora_targets(model: nn.Module, targets: list[str] | str | None, task_type: str = "CAUSAL_LM") -> list[str] | str:
    if targets is None:
        return default_lora_targets(model)
    if targets == "all-linear":
        return _backbone_linears(model) if task_type == "SEQ_CLS" else targets
    check_targets(model, list(targets))
    return targets


def ia3_targets(model: nn.Module, targets: list[str] | None,
                feedforward: list[str] | None) -> tuple[list[str], list[str]]:
    """(target_modules, feedforward_modules). peft's IA3 default (e.g. Llama: k_proj, v_proj, down_proj with
    down_proj scaled on its input), else the attention's linear layers without a feed-forward module."""
    model_type = _model_type(model)
    constants = load_peft_module().utils.constants
    if targets is None:
        mapped = constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)
        targets = list(mapped) if mapped else default_lora_targets(model)
        if feedforward is None:
            feedforward = list(constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, []))
    else:
        check_targets(model, list(targets))
        if feedforward is None:  # peft's feed-forward set, restricted to the chosen targets
            default_ff = constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, [])
            feedforward = [m for m in default_ff if m in targets]
    check_targets(model, list(feedforward), "method.feedforward_modules")
    return list(targets), list(feedforward)
