"""DeepSpeed ZeRO-2 / ZeRO-3 inside tuneforge's loop (`training.distributed: deepspeed`, 2+ processes under
torchrun / `--nproc`). The loop's own model, AdamW and LR schedule are handed to `deepspeed.initialize` directly
(not through accelerate: accelerate 1.16 turns DEEPSPEED off on a CPU-only machine, state.py `... and not cpu`,
and its `Accelerator.prepare` / `backward` would own the accumulation and the loss scaling that the loop does).

    zero = wrap(model, optimizer, cfg.training, precision)   # every rank, after make_optimizer
    zero.backward(loss, last)    # each micro-batch; `last`: the step's reduction happens here
    grad_norm = zero.step()      # clip (DeepSpeed's gradient_clipping) + AdamW on this rank's partition
    tensors = zero.gather_state()   # every rank: the one-process checkpoint's tensors (rank 0 writes them)
    zero.consolidate()           # every rank, at the end: plain whole parameters, DeepSpeed's hooks removed

What tuneforge keeps as in one process: the loss is divided by the supervised tokens of the global step and the
gradients are *summed* over ranks (DeepSpeed averages them, so each loss is multiplied by the world size first:
exact for a power of two); every rank runs the same number of forward/backward passes (ZeRO-3's forwards are
collectives: step_batches(even=True) gives a rank with fewer rows weight-0 copies). Precision: DeepSpeed keeps
fp32 weights and the loop's autocast decides the compute dtype (bf16 on CPUs with AMX, as without DeepSpeed);
fp16 (the GradScaler) is not wired. Checked with deepspeed 0.19.8, torch 2.13 on CPU (gloo); docs/distributed.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tuneforge.config.schema import TrainingConfig
from tuneforge.errors import ConfigError
from tuneforge.train import distributed as ddp
from tuneforge.train.zero import to_deepspeed_config

# module hook tables DeepSpeed (ZeRO-3) adds to: consolidate() removes what was not there before wrap()
HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks",
         "_state_dict_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
HOOK_FLAGS = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


def _deepspeed():
    try:
        import deepspeed
    except ImportError as exc:
        raise ConfigError("key 'training.distributed': deepspeed needs the deepspeed package: "
                          "DS_BUILD_OPS=0 pip install 'tuneforge[deepspeed]' (docs/distributed.md)") from exc
    return deepspeed


def to_engine_config(training: TrainingConfig) -> dict:
    """The generated DeepSpeed JSON, less its precision block: DeepSpeed keeps fp32 master weights, the loop's
    autocast sets the compute dtype. The loop's torch AdamW is the client optimizer (ZeRO partitions its state)."""
    config = {k: v for k, v in to_deepspeed_config(training).items() if k not in ("bf16", "fp16")}
    config["zero_allow_untested_optimizer"] = True
    config["zero_optimization"] = {**config["zero_optimization"], "overlap_comm": False}  # no side streams on CPU
    return config


@dataclass
class Zero:
    engine: object
    model: nn.Module
    optimizer: torch.optim.Optimizer  # the loop's AdamW, now stepping this rank's flat partition
    _modules: dict = field(default_factory=dict)  # what each module had before wrap(): attributes, hook keys

    @property
    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """One micro-batch's backward; DeepSpeed reduces (averages) the gradients at `last`, hence the factor."""
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * ddp.world_size(), scale_wrt_gas=False)

    def step(self) -> torch.Tensor:
        """Clip to training.max_grad_norm and step (inside DeepSpeed); the global gradient norm before clipping."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return torch.tensor(float("nan") if norm is None else float(norm))

    def skip(self) -> None:
        """A non-finite loss: drop the step's gradients without an update."""
        self.engine.zero_grad()
        self.engine.optimizer.zero_grad(set_to_none=True)

    def gather_state(self) -> tuple[dict, dict, dict]:
        """(trainable weights, optimizer tensors, optimizer meta) in the one-process checkpoint format
        (tuneforge.train.checkpoint): whole fp32 tensors gathered from the ZeRO partitions (collective)."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        weights, opt = {}, {}
        step = self._adam_step()
        for idx, (name, p) in enumerate(self.trainable):
            weights[name] = safe_get_full_fp32_param(p).detach().clone().contiguous()
            if step is not None:
                opt[f"{idx}.step"] = step.clone()
                for key in ("exp_avg", "exp_avg_sq"):
                    opt[f"{idx}.{key}"] = safe_get_full_optimizer_state(p, key).detach().clone().contiguous()
        group = {k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"}
        return weights, opt, {"param_groups": [{**group, "params": list(range(len(weights)))}]}

    def restore(self, weights: dict, opt: dict, meta: dict) -> None:
        """Put a one-process checkpoint's tensors into the partitions (every rank; the reverse of gather_state)."""
        from deepspeed.runtime.zero import GatheredParameters
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        if opt:  # torch's AdamW creates its state at the first step: create it, then fill this rank's part
            for flat in self._flat_partitions():
                self.optimizer.state[flat] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(flat),
                                              "exp_avg_sq": torch.zeros_like(flat)}
        for idx, (name, p) in enumerate(self.trainable):
            value = weights[name].to(torch.float32)
            safe_set_full_fp32_param(p, value)  # the fp32 master partition
            with GatheredParameters([p], modifier_rank=0), torch.no_grad():  # the model's copy (ZeRO-3: shard)
                p.data.copy_(value.to(p.dtype))
            if opt:
                for key in ("exp_avg", "exp_avg_sq"):
                    safe_set_full_optimizer_state(p, opt[f"{idx}.{key}"].to(torch.float32), key)
        if opt:
            for state in self.optimizer.state.values():
                state["step"] = opt["0.step"].clone()
        for group, saved in zip(self.optimizer.param_groups, meta["param_groups"], strict=True):
            group.update({k: v for k, v in saved.items() if k in ("lr", "initial_lr")})

    def _flat_partitions(self) -> list[torch.Tensor]:
        """This rank's fp32 partitions, which key the AdamW state (ZeRO-3 empties param_groups between steps)."""
        zopt = self.engine.optimizer
        return list(getattr(zopt, "fp32_partitioned_groups_flat", None) or zopt.single_partition_of_fp32_groups)

    def _adam_step(self) -> torch.Tensor | None:
        states = [s for s in self.optimizer.state.values() if "step" in s]
        return torch.as_tensor(states[0]["step"], dtype=torch.float32) if states else None

    def local_bytes(self) -> dict[str, int]:
        """Bytes this rank holds: parameters (ZeRO-3: its partition), trainable ones, optimizer state."""
        def held(p: nn.Parameter) -> int:
            return (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()) * p.element_size()

        params = list(self.model.parameters())
        return {"param_bytes": sum(held(p) for p in params),
                "trainable_param_bytes": sum(held(p) for p in params if p.requires_grad),
                "optimizer_bytes": sum(v.numel() * v.element_size() for s in self.optimizer.state.values()
                                       for v in s.values() if torch.is_tensor(v) and v.dim() > 0)}

    def consolidate(self) -> nn.Module:
        """Every rank (collective under ZeRO-3): each parameter whole and plain again, DeepSpeed's module hooks
        and attributes removed, so the stage evaluates and saves the model as in one process."""
        from deepspeed.runtime.zero import GatheredParameters

        fresh: dict[int, nn.Parameter] = {}
        for p in self.model.parameters():  # tied weights: one new parameter for one old one
            with GatheredParameters([p]):
                fresh[id(p)] = nn.Parameter(p.data.detach().clone(), requires_grad=p.requires_grad)
        for module in self.model.modules():
            before = self._modules.get(id(module))
            params = dict(getattr(module, "_original_parameters", module._parameters))
            module._parameters = {k: None if p is None else fresh.get(id(p), p) for k, p in params.items()}
            if before is None:
                continue
            for key in [k for k in module.__dict__ if k not in before["attrs"]]:
                del module.__dict__[key]  # ds_id, ds_grads_remaining, _original_parameters, ...
            for table in HOOKS:
                hooks = getattr(module, table)
                for key in [k for k in hooks if k not in before[table]]:
                    del hooks[key]
                    for flags in HOOK_FLAGS:
                        getattr(module, flags).pop(key, None)
        return self.model


def wrap(model: nn.Module, optimizer: torch.optim.Optimizer, training: TrainingConfig, precision: str) -> Zero:
    """deepspeed.initialize on the loop's model and AdamW (every rank; the process group is already up)."""
    if precision == "fp16":
        raise ConfigError("key 'training.precision': fp16 (a loss scaler) is not wired with training.distributed: "
                          "deepspeed; use precision bf16 or fp32, or training.distributed: fsdp")
    deepspeed = _deepspeed()
    snapshot = {id(m): {"attrs": set(m.__dict__), **{t: set(getattr(m, t)) for t in HOOKS}} for m in model.modules()}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=to_engine_config(training))
    return Zero(engine, model, optimizer, snapshot)
