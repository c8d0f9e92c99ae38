"""`estimate(config, method, ...)`: parameters and training memory of one method, from a config only.

    python -c "from tuneforge.plan import estimate, load_arch_config as l; print(estimate(l('smollm2-135m'), 'lora', batch_size=8, seq_len=256))"
"""

from __future__ import annotations

from transformers import PretrainedConfig

from tuneforge.errors import UserError
from tuneforge.plan import memory as mem
from tuneforge.plan.archs import build_meta_model, load_arch_config
from tuneforge.plan.params import Counts, count_params

METHODS = ("full", "freeze", "lora", "dora", "qlora", "ia3", "adapter", "prefix", "prompt")
LORA_DROPOUT = 0.05  # tuneforge's default `method.dropout`; dropout keeps a mask per adapted input
DORA_TEMP_FACTOR = 1.5  # DoRA keeps weight-sized tensors per adapted module: ~1.5 elements/param measured


def resolve_precision(name: str) -> mem.Precision:
    key = mem.PRECISION_ALIASES.get(name, name)
    if key not in mem.PRECISIONS:
        raise UserError(f"unknown precision {name!r}; known: {', '.join([*mem.PRECISIONS, *mem.PRECISION_ALIASES])}")
    return mem.PRECISIONS[key]


def _layer_bytes(lay: mem.Layout, counts: Counts, method: str, p: mem.Precision, seq: int, opts: dict) -> float:
    """Bytes per token one layer on the gradient path keeps for backward."""
    attention = opts.get("attention", "sdpa")
    if method in ("full", "freeze"):
        return mem.trained_layer(lay, p, seq, attention)
    base = mem.frozen_layer(lay, p, seq, attention)
    targets = counts.resolved.get("target_modules", [])
    if method in ("lora", "dora", "qlora"):
        dropout = opts.get("lora_dropout", LORA_DROPOUT)
        return base + mem.lora_extra(lay, p, targets, counts.resolved["r"], dropout)
    if method == "ia3":
        return base + mem.ia3_extra(lay, p, targets, counts.resolved.get("feedforward_modules", []))
    if method == "adapter":  # per adapter: its input (f) and the bottleneck before/after the activation
        return base + 2 * (lay.hidden * p.residual + 2 * opts.get("adapter_size", 64) * p.compute)
    if method == "prefix":  # cache concatenation copies the keys/values: measured ~2h per token
        return base + 2 * lay.hidden * p.compute
    return base  # prompt: the virtual tokens lengthen the sequence instead


def _per_layer_constant(lay: mem.Layout, counts: Counts, method: str, p: mem.Precision) -> float:
    """Token-independent bytes each gradient-path layer keeps: bf16 weight copies, DoRA temporaries."""
    total = 0.0
    if p.autocast and method != "qlora":  # bitsandbytes dequantizes again in backward instead of keeping a copy
        total += 2 * lay.block_linear_params
    if method == "dora":
        adapted = sum(i * o for n, (i, o) in lay.linears.items() if n in counts.resolved.get("target_modules", []))
        total += DORA_TEMP_FACTOR * adapted * p.compute
    return total


def activation_bytes(lay: mem.Layout, counts: Counts, method: str, p: mem.Precision, *,
                     batch_size: int, seq_len: int, opts: dict) -> dict[str, float]:
    seq = seq_len + (counts.resolved.get("num_virtual_tokens", 0) if method == "prompt" else 0)
    tokens = batch_size * seq
    per_layer = _layer_bytes(lay, counts, method, p, seq, opts)
    const = _per_layer_constant(lay, counts, method, p)
    if opts.get("gradient_checkpointing"):
        # Each checkpointed layer keeps only its input; backward recomputes one layer at a time.
        layers = counts.grad_blocks * lay.hidden * p.residual * tokens + per_layer * tokens + const
        const_total = const
    else:
        layers = counts.grad_blocks * (per_layer * tokens + const)
        const_total = counts.grad_blocks * const
    logits_tokens = tokens * opts.get("supervised_fraction", 1.0)
    head = logits_tokens * mem.head_per_token(lay, p) + (2 * lay.head_weight if p.autocast else 0)
    copies = const_total + (2 * lay.head_weight if p.autocast else 0)  # a subset of the two terms above
    return {"activations": layers + head, "activations_layers": layers, "activations_head": head,
            "activations_weight_copies": copies}


def state_bytes(lay: mem.Layout, counts: Counts, method: str, p: mem.Precision) -> dict[str, float]:
    """Weights, gradients, AdamW states and the fp32 master copy (bf16-master only)."""
    added = counts.total - counts.base_total  # adapter parameters, fp32
    if method == "qlora":
        quantized = lay.backbone_linear_params
        weights = quantized * mem.NF4_BYTES_PER_PARAM + (counts.base_total - quantized) * p.weight
    else:
        weights = counts.base_total * p.weight
    weights += added * mem.ADAPTER_BYTES
    base_trainable, adapter_trainable = counts.trainable_base, counts.trainable - counts.trainable_base
    return {
        "weights": weights,
        "gradients": base_trainable * p.weight + adapter_trainable * mem.ADAPTER_BYTES,
        "optimizer": counts.trainable * mem.ADAMW_BYTES,
        "master_weights": base_trainable * 4 if p.weight < 4 else 0,
    }


def estimate(config: PretrainedConfig | str, method: str, *, batch_size: int, seq_len: int,
             precision: str = "fp32", budget_gb: float | None = None, **method_params) -> dict:
    """Parameter counts and training memory (bytes and GiB) of `method` on `config`; no weights loaded.

    config: a transformers config, or a name/directory for load_arch_config. precision: fp32,
    bf16-mixed (alias bf16: tuneforge's autocast over fp32 weights) or bf16-master.
    method_params: r, lora_alpha, lora_dropout, target_modules, freeze_last_n, adapter_size,
    num_virtual_tokens, gradient_checkpointing, attention ("sdpa" | "eager"), supervised_fraction.
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if isinstance(config, str):
        config = load_arch_config(config)
    p = resolve_precision(precision)
    meta = build_meta_model(config)
    lay = mem.layout(meta)  # before the method wraps the Linear layers
    count_opts = {k: v for k, v in method_params.items()
                  if k in ("r", "lora_alpha", "target_modules", "freeze_last_n", "adapter_size", "num_virtual_tokens")}
    counts = count_params(meta, method, count_opts)
    parts = {**state_bytes(lay, counts, method, p),
             **activation_bytes(lay, counts, method, p, batch_size=batch_size, seq_len=seq_len, opts=method_params)}
    total = parts["weights"] + parts["gradients"] + parts["optimizer"] + parts["master_weights"] + parts["activations"]
    gib = {k: mem.gib(v) for k, v in parts.items()}
    return {
        "model": config.name_or_path, "method": method,
        "total_params": counts.total, "trainable_params": counts.trainable, "base_params": counts.base_total,
        "trainable_pct": 100 * counts.trainable / counts.total, "counted_by": counts.counted_by,
        "method_params": counts.resolved,
        "settings": {"batch_size": batch_size, "seq_len": seq_len, "precision": p.name,
                     "gradient_checkpointing": bool(method_params.get("gradient_checkpointing")),
                     "attention": method_params.get("attention", "sdpa"),
                     "supervised_fraction": method_params.get("supervised_fraction", 1.0),
                     **({"lora_dropout": method_params.get("lora_dropout", LORA_DROPOUT)}
                        if method in ("lora", "dora", "qlora") else {})},
        "bytes": {**{k: int(v) for k, v in parts.items()}, "total": int(total)},
        "gib": {**gib, "total": mem.gib(total)},
        "budget_gib": budget_gb, "fits": None if budget_gb is None else mem.gib(total) <= budget_gb,
    }
