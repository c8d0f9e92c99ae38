"""Trainable-parameter counts per method, on a meta-device model (no weights): the method's own `apply`
(tuneforge.methods.METHODS, the code a training run calls) changes the meta model, and the counts are read
off the result (peft's get_nb_trainable_parameters for peft methods), so the numbers are what training
would report, with the config's own option names and defaults.

    counts = count_params(build_meta_model(load_arch_config("llama-2-7b")), LoraConfig(r=8))
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch.nn as nn
from pydantic import BaseModel

from tuneforge.errors import UserError
from tuneforge.methods import METHODS, MethodContext
from tuneforge.methods import count_params as count_trainable
from tuneforge.plan.archs import MetaModel

HEADS = ("classifier", "score")  # a classifier's new head, kept trainable by every method (as the stages do)
# Modules after the blocks: a trainable one needs no backward through the blocks.
OUTPUT_SIDE = {"lm_head", *HEADS, "pre_classifier", "modules_to_save", "original_module"}


@dataclass
class Counts:
    """What a method trains. `total` is peft's "all params" (base + added adapter parameters)."""

    total: int
    trainable: int
    base_total: int
    counted_by: str
    grad_blocks: int  # blocks the backward pass must go through (they keep activations)
    trainable_base: int = 0  # trainable params that are base weights (full, freeze): stored in the weight dtype
    head_trains: bool = False  # the LM head's weight (tied or not) gets a gradient
    resolved: dict = field(default_factory=dict)  # method parameters after defaults, for the report


def _grad_blocks(model: nn.Module, blocks: nn.ModuleList) -> int:
    """Blocks from the first one holding a trainable parameter; all of them when something trains at the input
    side (embeddings, virtual tokens, prefixes), since its gradient has to come back through every block."""
    in_blocks = {id(p) for p in blocks.parameters()}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in in_blocks and not OUTPUT_SIDE & set(name.split(".")):
            return len(blocks)
    first = next((i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters())), len(blocks))
    return len(blocks) - first


def _countable(mcfg: BaseModel) -> BaseModel:
    """Options that change how adapters are initialised, not how many there are, set to what runs on meta
    tensors (PiSSA's SVD and prompt tuning's text init need real weights and a tokenizer)."""
    update = {k: v for k, v in (("init", "default"), ("init_text", None)) if k in type(mcfg).model_fields}
    return mcfg.model_copy(update=update)


def _resolved(model: nn.Module, mcfg: BaseModel) -> dict:
    out = {k: v for k, v in mcfg.model_dump().items() if k != "name"}
    pcfg = getattr(model, "peft_config", {}).get("default")
    for key in ("target_modules", "feedforward_modules"):
        value = getattr(pcfg, key, None)
        if isinstance(value, (set, list, tuple)):  # leaf names, as the memory formulas look layers up
            out[key] = sorted({v.rsplit(".", 1)[-1] for v in value})
    if getattr(pcfg, "token_dim", None) and getattr(pcfg, "num_virtual_tokens", None):
        out["kv_dim"] = pcfg.token_dim  # prefix tuning: after peft's GQA correction (num_kv_heads * head_dim)
    return out


def count_params(meta: MetaModel, mcfg: BaseModel) -> Counts:
    """Apply the method `mcfg` names to the meta model (which it changes: build a fresh one per call) and count."""
    method = METHODS[mcfg.name]
    model = meta.model
    base_ids = {id(p) for p in model.parameters()}
    base_total = sum(p.numel() for p in model.parameters())
    heads = tuple(n for n, _ in model.named_children() if n in HEADS) if meta.task == "SEQ_CLS" else ()
    ctx = MethodContext(model_path=str(model.config.name_or_path), task_type=meta.task, head_modules=heads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = method.apply(model, _countable(mcfg), ctx)
    except (ValueError, TypeError, RuntimeError) as exc:  # peft refusing this architecture / option
        raise UserError(f"{mcfg.name}: peft rejected the config: {str(exc).splitlines()[0]}") from None
    trainable, total = count_trainable(model)
    trainable_base = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) in base_ids)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_trains = bool(getattr(getattr(head, "weight", None), "requires_grad", False))
    return Counts(total=total, trainable=trainable, base_total=base_total, grad_blocks=_grad_blocks(model, meta.blocks),
                  counted_by=f"tuneforge's {mcfg.name} applied on the meta device", trainable_base=trainable_base,
                  head_trains=head_trains, resolved=_resolved(model, mcfg))
