"""Bottleneck adapters (Houlsby-style): after the attention and/or MLP of every block, a small
down-project -> non-linearity -> up-project with a residual. The up-projection starts at zero, so
training starts exactly at the base model. Base weights are frozen.

peft has no such method and the `adapters` library pins an old transformers, so this is ours: saved
as `bottleneck_adapter.safetensors` + `bottleneck_adapter.json` beside the base, like a peft adapter.
Merging is not applicable: the non-linearity cannot be folded into a linear weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from tuneforge.config.schema import AdapterConfig
from tuneforge.errors import ConfigError, ModelError
from tuneforge.methods.base import LoadBase, MethodContext

WEIGHTS, CONFIG = "bottleneck_adapter.safetensors", "bottleneck_adapter.json"
ATTENTION, MLP = ("self_attn", "attention", "attn"), ("mlp", "feed_forward", "ffn")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Bottleneck(nn.Module):
    def __init__(self, hidden: int, size: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden)
        nn.init.zeros_(self.up.weight)  # identity at start: output + up(...) == output
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


def _residual_hook(module: nn.Module, args, output):
    adapter = module.bottleneck_adapter
    if isinstance(output, tuple):  # attention returns (hidden, weights, ...)
        return (output[0] + adapter(output[0]), *output[1:])
    return output + adapter(output)


def _sublayers(model: nn.Module, where: str) -> list[nn.Module]:
    wanted = (ATTENTION if where in ("attention", "both") else ()) + (MLP if where in ("mlp", "both") else ())
    found = [m for name, m in model.named_modules()
             if name.rsplit(".", 1)[-1] in wanted and name.split(".")[-2].isdigit()]
    if not found:
        raise ConfigError(f"method adapter: no {where} sub-layers found in {type(model).__name__}")
    return found


def insert(model: nn.Module, mcfg: AdapterConfig) -> nn.Module:
    hidden = model.config.hidden_size
    for p in model.parameters():
        p.requires_grad_(False)
    ref = next(model.parameters())
    for sub in _sublayers(model, mcfg.where):
        sub.bottleneck_adapter = Bottleneck(hidden, mcfg.size, mcfg.activation).to(device=ref.device)
        sub.register_forward_hook(_residual_hook)
    model.bottleneck_config = mcfg
    return model


def apply_adapter(model: nn.Module, mcfg: AdapterConfig, ctx: MethodContext) -> nn.Module:
    return insert(model, mcfg)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if ".bottleneck_adapter." in n}


def save(model: nn.Module, directory: Path) -> None:
    save_file(adapter_state(model), str(directory / WEIGHTS))
    meta = {"method": "adapter", **model.bottleneck_config.model_dump(), "base_model": model.config.name_or_path}
    (directory / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def load_run(load_base: LoadBase, run_dir: Path) -> nn.Module:
    """A bottleneck-adapter run: its adapters on a freshly loaded base."""
    if not (run_dir / CONFIG).is_file():  # before the base loads
        raise ModelError(f"{run_dir}: no {CONFIG} (not a bottleneck-adapter run)")
    return load(load_base(None), run_dir)


def load(model: nn.Module, directory: str | Path) -> nn.Module:
    """Insert the saved adapters into a freshly loaded base and load their weights (strictly)."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file():
        raise ModelError(f"{directory}: no {CONFIG} (not a bottleneck-adapter run)")
    meta = json.loads((directory / CONFIG).read_text())
    mcfg = AdapterConfig(**{k: meta[k] for k in ("size", "where", "activation")})
    insert(model, mcfg)
    weights = load_file(str(directory / WEIGHTS))
    params = dict(model.named_parameters())
    if set(weights) != set(adapter_state(model)):
        raise ModelError(f"{directory / WEIGHTS}: adapter tensors do not match the base model's blocks")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    return model
