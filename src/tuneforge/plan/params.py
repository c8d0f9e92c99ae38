"""Trainable-parameter counts per fine-tuning method, on a meta-device model (no weights).

peft methods (lora, dora, qlora, ia3, prefix, prompt) are counted by running peft's own
`get_peft_model` on the meta model, so the numbers are peft's, not a re-derivation. `full` and
`freeze` flip `requires_grad` on the same model; `adapter` (bottleneck, not in peft) is analytic.

    python -c "from tuneforge.plan.params import count_params; help(count_params)"
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import peft
import torch.nn as nn

from tuneforge.errors import UserError
from tuneforge.plan.archs import MetaModel

# Defaults tuneforge passes when peft has no mapping for the architecture (peft 0.21 has none for
# DistilBERT); they mirror peft's BERT defaults: query/value for LoRA, key/value/FFN-out for IA3.
LORA_TARGETS: dict[str, list[str]] = {"distilbert": ["q_lin", "v_lin"]}
IA3_TARGETS: dict[str, tuple[list[str], list[str]]] = {"distilbert": (["k_lin", "v_lin", "lin2"], ["lin2"])}

DEFAULTS: dict[str, object] = {"r": 8, "lora_alpha": 16, "target_modules": None, "freeze_last_n": 2,
                               "adapter_size": 64, "num_virtual_tokens": 20}


@dataclass
class Counts:
    """What a method trains. `total` is peft's "all params" (base + added adapter parameters)."""

    total: int
    trainable: int
    base_total: int
    counted_by: str
    grad_blocks: int  # blocks the backward pass must go through (they keep activations)
    trainable_base: int = 0  # trainable params that are base weights (full, freeze): stored in the weight dtype
    resolved: dict = field(default_factory=dict)  # method parameters after defaults, for the report


def _numel(params) -> int:
    return sum(p.numel() for p in params)


def _first_trainable_block(blocks: nn.ModuleList) -> int:
    for i, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return len(blocks)


def _linear_names(blocks: nn.ModuleList) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in blocks[0].named_modules() if isinstance(m, nn.Linear)})


def _lora_targets(meta: MetaModel, targets: object) -> object:
    if targets is None:
        return LORA_TARGETS.get(meta.model.config.model_type)  # None: peft's own default mapping
    if targets == "all-linear" and meta.task == "SEQ_CLS":
        # peft's all-linear also wraps the classifier, which SEQ_CLS already lists in modules_to_save,
        # and get_peft_model raises (peft 0.21.2); the block Linears are what users mean.
        return _linear_names(meta.blocks)
    return targets


def _peft_config(meta: MetaModel, method: str, opts: dict) -> peft.PeftConfig:
    config, task = meta.model.config, meta.task
    if method in ("lora", "dora", "qlora"):
        return peft.LoraConfig(r=opts["r"], lora_alpha=opts["lora_alpha"], use_dora=method == "dora",
                               target_modules=_lora_targets(meta, opts["target_modules"]), task_type=task)
    if method == "ia3":
        targets, ff = IA3_TARGETS.get(config.model_type, (None, None))
        if opts["target_modules"] is not None:  # keep peft's feed-forward set, restricted to the chosen targets
            targets = _lora_targets(meta, opts["target_modules"])
            default_ff = peft.utils.constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
            ff = [m for m in default_ff.get(config.model_type, ff or []) if targets == "all-linear" or m in targets]
        return peft.IA3Config(target_modules=targets, feedforward_modules=ff, task_type=task)
    if method == "prefix":
        if task != "CAUSAL_LM":  # peft injects the prefix as past_key_values; encoders such as DistilBERT take none
            raise UserError(f"prefix tuning needs a decoder with a KV cache; {config.model_type} has none")
        return peft.PrefixTuningConfig(num_virtual_tokens=opts["num_virtual_tokens"], task_type=task)
    return peft.PromptTuningConfig(  # token_dim given: peft cannot find it in DistilBERT's config dict
        num_virtual_tokens=opts["num_virtual_tokens"], token_dim=config.hidden_size,
        num_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads, task_type=task)


def _resolved(pcfg: peft.PeftConfig) -> dict:
    out = {}
    for key in ("r", "lora_alpha", "use_dora", "target_modules", "feedforward_modules", "num_virtual_tokens"):
        value = getattr(pcfg, key, None)
        if value is not None:
            out[key] = sorted(value) if isinstance(value, (set, list)) else value
    if getattr(pcfg, "peft_type", None) == peft.PeftType.PREFIX_TUNING:
        out["kv_dim"] = pcfg.token_dim  # after peft's GQA correction: num_kv_heads * head_dim
    return out


def _count_peft(meta: MetaModel, method: str, opts: dict) -> Counts:
    base_total = _numel(meta.model.parameters())
    pcfg = _peft_config(meta, method, opts)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = peft.get_peft_model(meta.model, pcfg)
    except ValueError as exc:  # e.g. target modules that do not exist in this architecture
        raise UserError(f"{method}: peft rejected the config: {exc}") from None
    trainable, total = model.get_nb_trainable_parameters()
    input_side = method in ("prefix", "prompt")  # the virtual tokens feed every layer from the input side
    first = 0 if input_side else _first_trainable_block(meta.blocks)
    return Counts(total=total, trainable=trainable, base_total=base_total, counted_by="peft on meta device",
                  grad_blocks=len(meta.blocks) - first, resolved=_resolved(pcfg))


def _count_full(meta: MetaModel, opts: dict) -> Counts:
    total = _numel(meta.model.parameters())
    return Counts(total=total, trainable=total, base_total=total, counted_by="meta model",
                  grad_blocks=len(meta.blocks), trainable_base=total)


def _head_params(meta: MetaModel) -> list[nn.Parameter]:
    """Parameters outside the backbone: the LM head if untied, a classification head."""
    inner = {id(p) for p in meta.model.base_model.parameters()}
    return [p for p in meta.model.parameters() if id(p) not in inner]  # a tied LM head is the embedding: inside


def _count_freeze(meta: MetaModel, opts: dict) -> Counts:
    n = opts["freeze_last_n"]
    if not 0 < n <= len(meta.blocks):
        raise UserError(f"freeze: --freeze-last-n must be 1..{len(meta.blocks)}, got {n}")
    meta.model.requires_grad_(False)
    for block in meta.blocks[-n:]:
        block.requires_grad_(True)
    head = _head_params(meta)
    for p in head:
        p.requires_grad_(True)
    trainable = _numel(p for p in meta.model.parameters() if p.requires_grad)
    total = _numel(meta.model.parameters())
    return Counts(total=total, trainable=trainable, base_total=total, counted_by="meta model", grad_blocks=n,
                  trainable_base=trainable, resolved={"freeze_last_n": n, "head_trains": bool(head)})


def _count_adapter(meta: MetaModel, opts: dict) -> Counts:
    """Houlsby bottleneck: after attention and after the MLP of every block, h->m and m->h with biases."""
    h, m = meta.model.config.hidden_size, opts["adapter_size"]
    added = len(meta.blocks) * 2 * (h * m + m + m * h + h)
    head = _numel(_head_params(meta)) if meta.task == "SEQ_CLS" else 0  # a new classifier must train
    base_total = _numel(meta.model.parameters())
    return Counts(total=base_total + added, trainable=added + head, base_total=base_total, counted_by="analytic",
                  grad_blocks=len(meta.blocks), trainable_base=head, resolved={"adapter_size": m})


COUNTERS: dict[str, Callable[[MetaModel, dict], Counts]] = {
    "full": _count_full,
    "freeze": _count_freeze,
    "lora": lambda meta, opts: _count_peft(meta, "lora", opts),
    "dora": lambda meta, opts: _count_peft(meta, "dora", opts),
    "qlora": lambda meta, opts: _count_peft(meta, "qlora", opts),
    "ia3": lambda meta, opts: _count_peft(meta, "ia3", opts),
    "adapter": _count_adapter,
    "prefix": lambda meta, opts: _count_peft(meta, "prefix", opts),
    "prompt": lambda meta, opts: _count_peft(meta, "prompt", opts),
}


def count_params(meta: MetaModel, method: str, opts: dict) -> Counts:
    """Apply `method` to the meta model (which it may change: build a fresh one per call) and count."""
    if method not in COUNTERS:
        raise UserError(f"unknown method {method!r}; known: {', '.join(COUNTERS)}")
    return COUNTERS[method](meta, {**DEFAULTS, **opts})
