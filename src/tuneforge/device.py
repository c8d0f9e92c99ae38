"""The one place that decides where a model runs: `training.device` (and `--device` of chat / serve / eval /
predict) is `auto | cpu | cuda | cuda:N | mps`; auto = CUDA if present, else MPS, else the CPU. Under torchrun
`cuda` means this rank's GPU (cuda:LOCAL_RANK). A device this machine lacks is a ConfigError (exit 2) that names
the key and what the machine has.

    device = resolve_device(cfg.training.device)                      # torch.device
    device = resolve_device(args.device, key="--device")
"""

from __future__ import annotations

import os
import re

import torch

from tuneforge.errors import ConfigError

DEVICE_PATTERN = r"auto|cpu|cuda|cuda:\d+|mps"


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def available() -> list[str]:
    """What this machine has, e.g. ['cuda:0', 'cuda:1', 'cpu'] or ['cpu']."""
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return found + (["mps"] if _mps() else []) + ["cpu"]


def _missing(spec: str, key: str) -> ConfigError:
    build = "" if torch.version.cuda else f" (this torch {torch.__version__} is built without CUDA)"
    return ConfigError(f"key '{key}': {spec!r} is not available on this machine, which has {', '.join(available())}"
                       f"{build}; use {key}=auto (CUDA if present, else MPS, else CPU) or one of those")


def resolve_device(spec: str | None = "auto", key: str = "training.device") -> torch.device:
    spec = (spec or "auto").strip()
    if not re.fullmatch(DEVICE_PATTERN, spec):
        raise ConfigError(f"key '{key}': {spec!r} is not a device; expected auto, cpu, cuda, cuda:N or mps")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps():
            raise _missing(spec, key)
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise _missing(spec, key)
    index = int(spec.split(":")[1]) if ":" in spec else int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise _missing(f"cuda:{index}", key)
    return torch.device("cuda", index)


def move(batch, device: torch.device):
    """A batch (a dataclass or dict of tensors, or a tensor) with its tensors on `device`; same object on the CPU."""
    if device.type == "cpu":
        return batch
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move(v, device) for k, v in batch.items()}
    if hasattr(batch, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.replace(batch, **{f.name: move(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    return batch


def model_device(model) -> torch.device:
    """Where the model's first parameter lives (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def select(spec: str | None = "auto", key: str = "training.device") -> torch.device:
    """resolve_device, and make it the device autocast and the precision choice use in this process."""
    from tuneforge.train.precision import use_device

    device = resolve_device(spec, key)
    use_device(device)
    return device


def for_command(flag: str | None, configured: str | None = None) -> torch.device:
    """The device of a command that loads a model (merge, export, data bias, eval, predict, chat, serve):
    `--device` when given, else the run's training.device, else auto. Checked before any model loads (exit 2
    naming `--device` or `training.device` and what this machine has) and selected for autocast."""
    if flag:
        return select(flag, "--device")
    return select(configured or "auto", "training.device")


def device_overrides(flag: str | None, overrides: list[str]) -> list[str]:
    """`--device` of a command that trains through configs (compare, hpo): checked here, before the first run
    starts, then passed on to every run as the `training.device=...` override (which wins over the config's)."""
    if not flag:
        return list(overrides)
    resolve_device(flag, "--device")
    return [*overrides, f"training.device={flag.strip()}"]


def place(model, device: torch.device):
    """`model` on `device`, unless it was placed at load (a bitsandbytes 4-bit base, or a device_map that
    spread it over several GPUs): moving those would fail or undo the sharding."""
    placed = getattr(model, "is_loaded_in_4bit", False) or len(set(getattr(model, "hf_device_map", {}).values())) > 1
    if not placed and model_device(model) != device:
        model.to(device)
    return model
