"""FSDP2 (torch's `fully_shard`) for `training.distributed: fsdp`: every decoder layer and the root are
sharded over the ranks, so each rank holds 1/N of the parameters, gradients and AdamW states (gloo on CPU,
nccl on GPU). The loop stays the same: the loss is divided by the supervised tokens of the global step and
the gradients are *summed* across ranks (gradient divide factor 1, not FSDP's default mean).

    tuneforge train examples/quickstart.yaml training.distributed=fsdp --nproc 2

    shard_model(model)                     # in place; every rank, before the optimizer is built
    sizes = local_bytes(model, optimizer)  # this rank's parameter / optimizer-state bytes
    unshard_model(model)                   # in place, every rank: full plain parameters again (save, eval)

Checked with torch 2.13 (CPU, gloo): frozen and trainable parameters (LoRA) share a layer's parameter group.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


def _fsdp_api():
    from torch.distributed.fsdp import FSDPModule, fully_shard  # torch >= 2.6

    return FSDPModule, fully_shard


def _layer_classes(model: nn.Module) -> set[str]:
    """The transformer blocks transformers declares unsplittable (`_no_split_modules`), e.g. LlamaDecoderLayer."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


# the hook tables fully_shard adds to (torch 2.13): forward (gather / free), state_dict (reshard), load
HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_state_dict_pre_hooks", "_state_dict_hooks",
         "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
HOOK_FLAGS = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


def _hooks(model: nn.Module) -> dict[int, dict[str, set]]:
    return {id(m): {name: set(getattr(m, name)) for name in HOOKS} for m in model.modules()}


def shard_model(model: nn.Module) -> nn.Module:
    """fully_shard each transformer block, then the root (embeddings, norm, head: tied weights stay in one
    group). Gradients are reduce-scattered as sums: the loss is already divided by the global token count."""
    FSDPModule, fully_shard = _fsdp_api()
    model._tuneforge_hooks = _hooks(model)  # what unshard_model restores
    blocks = _layer_classes(model)
    for module in list(model.modules()):
        if type(module).__name__ in blocks and module is not model:
            fully_shard(module)
    fully_shard(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no PREMUL_SUM (torch 2.13)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, _fsdp_api()[0])


def reshard(model: nn.Module) -> None:
    """Every parameter back to this rank's shard (no communication): the root keeps its gathered weights after
    a forward without backward (an evaluation)."""
    FSDPModule, _ = _fsdp_api()
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (an all-gather for a sharded one: every rank must call it)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full tensor that every rank holds, laid out like `param` (this rank's shard of it; no communication)."""
    if isinstance(param, DTensor) and value.dim() > 0:
        return distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None)
    return value


def local_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this process holds: all parameters, the trainable ones, and the optimizer's state tensors."""
    reshard(model)
    params = list(model.parameters())
    out = {"param_bytes": sum(_local(p).numel() * p.element_size() for p in params),
           "trainable_param_bytes": sum(_local(p).numel() * p.element_size() for p in params if p.requires_grad)}
    if optimizer is not None:
        out["optimizer_bytes"] = sum(_local(v).numel() * v.element_size() for s in optimizer.state.values()
                                     for v in s.values() if torch.is_tensor(v))
    return out


def unshard_model(model: nn.Module) -> nn.Module:
    """Undo shard_model in place: all-gather every parameter (collective: every rank calls it), put plain
    parameters back, give each module its own class and forward hooks again. The model is then an ordinary
    transformers / peft model on every rank: rank 0 evaluates and saves it alone, in the usual format."""
    from torch.distributed._composable.contract import REGISTRY_KEY, STATE_KEY

    FSDPModule, _ = _fsdp_api()
    if not is_sharded(model):
        return model
    reshard(model)
    replaced: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or not isinstance(p, DTensor):
                continue
            if id(p) not in replaced:  # tied weights: one new parameter for one old one
                replaced[id(p)] = nn.Parameter(p.full_tensor().detach().clone(), requires_grad=p.requires_grad)
            module._parameters[name] = replaced[id(p)]
    saved = getattr(model, "_tuneforge_hooks", {})
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.__class__ = type(module).__mro__[type(module)._orig_cls_mro_index]
        before = saved.get(id(module), {})
        for table in HOOKS:
            hooks = getattr(module, table)
            for key in [k for k in hooks if k not in before.get(table, set())]:
                del hooks[key]
                for flags in HOOK_FLAGS:
                    getattr(module, flags).pop(key, None)
        for attr in ("_is_fsdp_managed_module", "_fsdp_use_orig_params", STATE_KEY, REGISTRY_KEY):
            module.__dict__.pop(attr, None)  # the FSDP state (it holds the shards) and the "applied" record
    model.__dict__.pop("_tuneforge_hooks", None)
    return model
