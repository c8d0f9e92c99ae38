"""`estimate(config, method, ...)`: parameters and training memory of one method, from a config only. The
method options are the config's own keys (`r`, `alpha`, `target_modules`, `last_n_layers`, `size`,
`num_virtual_tokens`, ...) with the config's defaults; the parameters come from applying the real method.

    estimate('smollm2-135m', 'lora', r=16, batch_size=8, seq_len=256)   # tuneforge.plan.estimate
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from pydantic import BaseModel, ValidationError
from transformers import PretrainedConfig

import tuneforge.plan.memory as mem
from tuneforge.config.schema import METHOD_CONFIGS
from tuneforge.errors import ConfigError, UserError
from tuneforge.methods import METHODS
from tuneforge.plan.archs import build_meta_model, load_arch_config
from tuneforge.plan.params import Counts, count_params
from tuneforge.train.frozen import STREAM_REFUSED

DORA_TEMP_FACTOR = 1.5  # DoRA keeps weight-sized tensors per adapted module: ~1.5 elements/param measured
Extra = Callable[[mem.Layout, Counts, mem.Precision], float]
# Bytes per token a gradient-path layer keeps beyond the frozen layer, per adapter kind (whole-model methods
# keep every Linear's input instead: mem.trained_layer). A method not listed adds nothing per token.
ACTIVATION_EXTRA: dict[str, Extra] = {
    "lora": lambda lay, c, p: mem.lora_extra(lay, p, c.resolved["target_modules"], c.resolved["r"],
                                             c.resolved["dropout"]),
    "ia3": lambda lay, c, p: mem.ia3_extra(lay, p, c.resolved["target_modules"], c.resolved["feedforward_modules"]),
    # per adapter: its input (f) and the bottleneck before/after the activation
    "adapter": lambda lay, c, p: 2 * (lay.hidden * p.residual + 2 * c.resolved["size"] * p.compute),
    "prefix": lambda lay, c, p: 2 * lay.hidden * p.compute,  # cache concatenation copies keys/values: ~2h per token
}
ACTIVATION_EXTRA["qlora"] = ACTIVATION_EXTRA["lora"]
LENGTHENS_SEQUENCE = {"prompt"}  # virtual tokens prepended to the input: every layer sees seq + p positions


def resolve_precision(name: str) -> mem.Precision:
    key = mem.PRECISION_ALIASES.get(name, name)
    if key not in mem.PRECISIONS:
        raise UserError(f"unknown precision {name!r}; known: {', '.join([*mem.PRECISIONS, *mem.PRECISION_ALIASES])}")
    return mem.PRECISIONS[key]


def method_config(method: str | BaseModel, **params) -> BaseModel:
    """The method's config (schema class, defaults filled) from its name and the config's own keys."""
    if isinstance(method, BaseModel):
        return method.model_copy(update=params) if params else method
    if method not in METHODS:
        raise ConfigError(f"key 'method.name': unknown method {method!r}; known: {', '.join(METHODS)}")
    try:
        return METHOD_CONFIGS[method].model_validate({**params, "name": method})
    except ValidationError as exc:
        problems = "; ".join(f"key 'method.{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors())
        raise ConfigError(f"method {method!r}: {problems}") from None


def _layer_bytes(lay: mem.Layout, counts: Counts, mcfg: BaseModel, p: mem.Precision, seq: int,
                 attention: str) -> float:
    """Bytes per token one layer on the gradient path keeps for backward."""
    if METHODS[mcfg.name].saves_whole_model:
        return mem.trained_layer(lay, p, seq, attention)
    extra = ACTIVATION_EXTRA.get(mcfg.name)
    return mem.frozen_layer(lay, p, seq, attention) + (extra(lay, counts, p) if extra else 0.0)


def held_bf16(lay: mem.Layout, counts: Counts, mcfg: BaseModel, p: mem.Precision, frozen_bf16: bool) -> int:
    """Frozen linear weights training.frozen_bf16 holds in bf16 under bf16-mixed (tuneforge/train/frozen.py): the
    backbone's Linear layers under a method that trains none of them, the frozen blocks' under full / freeze;
    none on a quantized base. (An untied frozen LM head is held too but not counted here: a small over-count.)"""
    m = METHODS[mcfg.name]
    if not (frozen_bf16 and p.autocast) or m.quantized_base:
        return 0
    if m.saves_whole_model:
        return (lay.layers - counts.grad_blocks) * lay.block_linear_params
    return lay.backbone_linear_params


def _per_layer_constant(lay: mem.Layout, counts: Counts, mcfg: BaseModel, p: mem.Precision,
                        frozen_bf16: bool = True) -> float:
    """Token-independent bytes each gradient-path layer keeps: bf16 weight copies (none where frozen_bf16 holds
    the layer's weights in bf16 already), DoRA temporaries."""
    total = 0.0
    m = METHODS[mcfg.name]
    # a method that trains no base Linear: with frozen_bf16 every gradient-path layer's weights are bf16 already
    weights_held = not m.saves_whole_model and held_bf16(lay, counts, mcfg, p, frozen_bf16) > 0
    if p.autocast and not m.quantized_base and not weights_held:  # bitsandbytes dequantizes again in backward
        total += 2 * lay.block_linear_params
    if counts.resolved.get("use_dora"):
        targets = counts.resolved.get("target_modules", [])
        adapted = sum(i * o for n, (i, o) in lay.linears.items() if n in targets)
        total += DORA_TEMP_FACTOR * adapted * p.compute
    return total


def streamed(mcfg: BaseModel, p: mem.Precision, bf16_stream: bool) -> bool:
    """training.bf16_stream reaches this run: bf16-mixed, a method that trains no base weight and puts no fp32
    virtual tokens beside the hidden states (tuneforge/train/frozen.py)."""
    m = METHODS[mcfg.name]
    return bool(bf16_stream and p.autocast and not m.saves_whole_model and mcfg.name not in STREAM_REFUSED)


def chunked_head_applies(lay: mem.Layout, mcfg: BaseModel, chunked_loss: bool) -> bool:
    """training.chunked_loss reaches a causal LM's packed rows; padded methods (prefix, prompt) keep the plain loss."""
    return bool(chunked_loss and lay.vocab and METHODS[mcfg.name].packing)


def activation_bytes(lay: mem.Layout, counts: Counts, mcfg: BaseModel, p: mem.Precision, *, batch_size: int,
                     seq_len: int, gradient_checkpointing: bool = False, attention: str = "sdpa",
                     supervised_fraction: float = 1.0, frozen_bf16: bool = True,
                     chunked_loss: bool = True, bf16_stream: bool = False) -> dict[str, float]:
    stream = streamed(mcfg, p, bf16_stream)
    if stream:  # the hidden states and norm tensors bf16; every frozen weight held in bf16 (no autocast copies)
        p, frozen_bf16 = replace(p, residual=2), True
    seq = seq_len + (counts.resolved.get("num_virtual_tokens", 0) if mcfg.name in LENGTHENS_SEQUENCE else 0)
    tokens = batch_size * seq
    per_layer = _layer_bytes(lay, counts, mcfg, p, seq, attention)
    const = _per_layer_constant(lay, counts, mcfg, p, frozen_bf16)
    if gradient_checkpointing:
        # Each checkpointed layer keeps only its input; backward recomputes one layer at a time.
        layers = counts.grad_blocks * lay.hidden * p.residual * tokens + per_layer * tokens + const
        const_total = const
    else:
        layers = counts.grad_blocks * (per_layer * tokens + const)
        const_total = counts.grad_blocks * const
    logits_tokens = tokens * supervised_fraction
    if chunked_head_applies(lay, mcfg, chunked_loss):
        per_tokens = mem.chunked_head(lay, p, logits_tokens, counts.head_trains)
    else:
        per_tokens = logits_tokens * mem.head_per_token(lay, p)
    head_copy = 2 * lay.head_weight if p.autocast and not stream else 0  # the stream holds the head in bf16
    head = per_tokens + head_copy
    copies = const_total + head_copy  # a subset of the two terms above
    return {"activations": layers + head, "activations_layers": layers, "activations_head": head,
            "activations_weight_copies": copies}


def state_bytes(lay: mem.Layout, counts: Counts, mcfg: BaseModel, p: mem.Precision,
                frozen_bf16: bool = True, bf16_stream: bool = False) -> dict[str, float]:
    """Weights (the frozen linear ones held in bf16 under frozen_bf16), gradients, AdamW states and the fp32
    master copy (bf16-master only). Training's footprint: the weights are loaded in fp32 first."""
    added = counts.total - counts.base_total  # adapter parameters, fp32
    if METHODS[mcfg.name].quantized_base:
        quantized = lay.backbone_linear_params
        weights = quantized * mem.NF4_BYTES_PER_PARAM + (counts.base_total - quantized) * p.weight
    else:
        weights = counts.base_total * p.weight
    stream = streamed(mcfg, p, bf16_stream)
    weights += added * mem.ADAPTER_BYTES - held_bf16(lay, counts, mcfg, p, frozen_bf16 or stream) * (p.weight - 2)
    if stream:  # the rest of the base too: embeddings, norms, an untied head
        weights -= (counts.base_total - lay.backbone_linear_params) * (p.weight - 2)
    base_trainable, adapter_trainable = counts.trainable_base, counts.trainable - counts.trainable_base
    return {
        "weights": weights,
        "gradients": base_trainable * p.weight + adapter_trainable * mem.ADAPTER_BYTES,
        "optimizer": counts.trainable * mem.ADAMW_BYTES,
        "master_weights": base_trainable * 4 if p.weight < 4 else 0,
    }


def estimate(config: PretrainedConfig | str, method: str | BaseModel, *, batch_size: int, seq_len: int,
             precision: str = "fp32", budget_gb: float | None = None, gradient_checkpointing: bool = False,
             attention: str = "sdpa", supervised_fraction: float = 1.0, classifier: bool | None = None,
             frozen_bf16: bool = True, chunked_loss: bool = True, bf16_stream: bool = False,
             **method_params) -> dict:
    """Parameter counts and training memory (bytes and GiB) of `method` on `config`; no weights loaded.

    config: a transformers config, or a name/directory for load_arch_config. method: a method name (its
    options as keyword arguments with the config's key names, e.g. r=16, target_modules="all-linear",
    last_n_layers=2) or a method config object. precision: fp32, bf16-mixed (alias bf16: tuneforge's autocast
    over fp32 weights) or bf16-master. classifier: a sequence-classification model (default: encoders).
    frozen_bf16: training.frozen_bf16 (bf16-mixed only: frozen linear weights held in bf16 while training).
    chunked_loss: training.chunked_loss (a causal LM's head and loss a chunk of positions at a time).
    bf16_stream: training.bf16_stream (bf16-mixed: every frozen weight held in bf16, bf16 hidden states).
    """
    mcfg = method_config(method, **method_params)
    if isinstance(config, str):
        config = load_arch_config(config)
    p = resolve_precision(precision)
    meta = build_meta_model(config, classifier)
    lay = mem.layout(meta)  # before the method wraps the Linear layers
    counts = count_params(meta, mcfg)
    parts = {**state_bytes(lay, counts, mcfg, p, frozen_bf16, bf16_stream),
             **activation_bytes(lay, counts, mcfg, p, batch_size=batch_size, seq_len=seq_len,
                                gradient_checkpointing=gradient_checkpointing, attention=attention,
                                supervised_fraction=supervised_fraction, frozen_bf16=frozen_bf16,
                                chunked_loss=chunked_loss, bf16_stream=bf16_stream)}
    total = parts["weights"] + parts["gradients"] + parts["optimizer"] + parts["master_weights"] + parts["activations"]
    gib = {k: mem.gib(v) for k, v in parts.items()}
    return {
        "model": config.name_or_path, "method": mcfg.name,
        "total_params": counts.total, "trainable_params": counts.trainable, "base_params": counts.base_total,
        "trainable_pct": 100 * counts.trainable / counts.total, "counted_by": counts.counted_by,
        "method_params": counts.resolved,
        "settings": {"batch_size": batch_size, "seq_len": seq_len, "precision": p.name,
                     "gradient_checkpointing": gradient_checkpointing, "attention": attention,
                     "supervised_fraction": supervised_fraction, "task": meta.task,
                     "frozen_bf16": bool(frozen_bf16 and p.autocast),
                     "bf16_stream": streamed(mcfg, p, bf16_stream),
                     "chunked_loss": chunked_head_applies(lay, mcfg, chunked_loss)},
        "bytes": {**{k: int(v) for k, v in parts.items()}, "total": int(total)},
        "gib": {**gib, "total": mem.gib(total)},
        "budget_gib": budget_gb, "fits": None if budget_gb is None else mem.gib(total) <= budget_gb,
    }
