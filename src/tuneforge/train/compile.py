"""training.compile: the training forward (and so its backward) through torch.compile (inductor), with dynamic
shapes: packed rows and the supervised positions kept for the LM head vary in length from step to step, and one
dynamic graph serves them all. Measured (bench/profile_step.py; docs/benchmarks.md, "torch.compile"): 1.09x per
fp32 LoRA step on a 2-core Xeon without AMX, after a ~317 CPU s compile of the 135M default; static graphs over rows
padded to training.pack_length gave 0.65x (the padding cost more than the static kernels saved). Default off.

Only the loop's training forward runs compiled: `compiled_forward` returns torch.compile's wrapper around the
model, which shares the model's parameters. The model itself is never replaced, so checkpoints, adapters, merge
and resume see the usual parameter names (no `_orig_mod.` prefix), and evaluation and generation run eagerly (no
extra graphs for no_grad, eval mode or a KV cache).

    check_compile(cfg)                           # ConfigError where compile is refused (config/checks.py)
    runner = compiled_forward(model, log)        # the loop calls runner(...) for training forwards only
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import torch

from tuneforge.config.schema import Config
from tuneforge.errors import ConfigError
from tuneforge.stage_info import STAGE_INFO, stage_info

# the sharded strategies wrap or replace the module the loop calls (FSDP2 hooks, DeepSpeed's engine): untested
# with a compiled forward here, so refused rather than guessed at
REFUSED_DISTRIBUTED = ("fsdp", "deepspeed")


def check_compile(cfg: Config) -> None:
    t = cfg.training
    if not t.compile:
        return
    if not stage_info(cfg.stage).distributed:  # the stages the loop trains (the others train through TRL / ppo's)
        loops = ", ".join(n for n, i in STAGE_INFO.items() if i.distributed)
        raise ConfigError(f"key 'training.compile': compiles the forward of tuneforge's own loop, which trains "
                          f"{loops}, not {cfg.stage!r}; set training.compile=false")
    if t.distributed in REFUSED_DISTRIBUTED:
        raise ConfigError(f"key 'training.compile': not supported with training.distributed={t.distributed} "
                          f"(untested there); use training.compile=false, or distributed ddp")


def compiled_forward(model: torch.nn.Module, log: Callable[[str], None] = print) -> torch.nn.Module:
    """torch.compile's wrapper around `model` (same parameters; compiled lazily at its first call)."""
    if shutil.which("g++") is None and shutil.which("c++") is None and model_is_cpu(model):
        raise ConfigError("key 'training.compile': torch.compile's CPU backend (inductor) needs a C++ compiler "
                          "(g++); install one or set training.compile=false")
    log("torch.compile: inductor, dynamic shapes; the first step includes compile time (minutes on a CPU: "
        "~5 CPU min for the 135M default)")
    return torch.compile(model, dynamic=True)


def model_is_cpu(model: torch.nn.Module) -> bool:
    return next(model.parameters()).device.type == "cpu"
