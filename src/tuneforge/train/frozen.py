"""Frozen linear weights held in bf16 while training under bf16 autocast (training.frozen_bf16).

Under bf16 autocast a linear layer's fp32 weight is cast to bf16 at every use, and autocast caches the cast only
for tensors that require grad: a frozen base is cast again at every forward, and each cast is kept for the
backward. Holding the frozen weights as those bf16 tensors does the rounding once, so forward and backward are
bit for bit what they were (tests/unit/test_frozen.py), while the fp32 weights and the per-forward casts leave
memory. The weights loaded from safetensors are views of the file's mapping, resident once read; the mapping is
let go only when no tensor of the model points into it, so the tensors that stay fp32 (embeddings, norms, the
trained ones) are copied out of it first.

Only weights that can come back exactly are held: each one's fp32 value must equal the tensor its name maps to
in the model's safetensors files (a weight transformers changed on load stays fp32). When training ends, in
every case, each is read back from its file, checked against the bf16 value held, and put back in fp32, so
evaluation, generation and saving afterwards see the model as loaded. Left alone: weights tied to an embedding
(a tied LM head), DoRA's base layers (DoRA adds the base weight to the LoRA product outside a matmul), anything
already quantized, and runs in fp32 or fp16.

training.bf16_stream holds every other frozen fp32 weight the same way (embeddings, tied heads, norms), so the
hidden states between layers are bf16 too (what a GPU run on a model loaded in bf16 computes): no fp32 <-> bf16
cast around each layer, half the activations' bytes, and no longer bit for bit the fp32-stream run (the losses
agree within bf16 rounding: tests/unit/test_bf16_stream.py). peft's cast of a LoRA input to its fp32 weight's dtype
is off meanwhile (autocast casts it back at the matmul). Not for prefix or prompt tuning (their fp32 virtual
tokens would meet bf16 states), nor with fsdp / deepspeed.

    with held_in_bf16(model, cfg, precision, log):
        ...  # the training loop
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tuneforge.errors import ModelError
from tuneforge.train.precision import dora_bases

PEFT_PREFIX = "base_model.model."


@dataclass
class Held:
    param: nn.Parameter
    key: str
    file: Path


def frozen_linear_params(model: nn.Module) -> list[nn.Parameter]:
    """The frozen fp32 weights and biases of nn.Linear layers, less those tied to an embedding and DoRA bases."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    dora = {id(m) for m in dora_bases(model)}
    out, seen = [], set()
    for module in model.modules():
        if not isinstance(module, nn.Linear) or id(module) in dora:
            continue
        for p in (module.weight, module.bias):
            if p is not None and not p.requires_grad and p.dtype == torch.float32 and id(p) not in embedded \
                    and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def frozen_stream_params(model: nn.Module) -> list[nn.Parameter]:
    """training.bf16_stream: the frozen fp32 floating parameters frozen_linear_params leaves (embeddings, a tied
    head, norms, biases), less DoRA's base layers."""
    linear = {id(p) for p in frozen_linear_params(model)}
    dora = {id(p) for base in dora_bases(model) for p in base.parameters()}
    out, seen = [], set()
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32 and id(p) not in linear | dora | seen:
            seen.add(id(p))
            out.append(p)
    return out


def key_candidates(name: str, prefix: str) -> list[str]:
    """A parameter's name in the (PEFT-wrapped) model -> the names it may have in the checkpoint files: PEFT's
    wrapper prefix and `.base_layer` dropped, then also without the architecture's base_model_prefix (an encoder
    saved bare, loaded under a task head: `bert.encoder...` -> `encoder...`)."""
    name = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
    return [name] + ([name.removeprefix(prefix + ".")] if prefix and name.startswith(prefix + ".") else [])


class _Files:
    """Each safetensors file opened once, for its tensor names and the tensors read from it."""

    def __init__(self) -> None:
        self.stack, self.open = ExitStack(), {}

    def _handle(self, file: Path):
        from safetensors import safe_open

        if file not in self.open:
            self.open[file] = self.stack.enter_context(safe_open(str(file), framework="pt"))
        return self.open[file]

    def keys(self, model_dir: Path) -> dict[str, Path]:
        """Every tensor name in the directory's safetensors files -> its file."""
        files = sorted(Path(model_dir).glob("*.safetensors"))
        return {key: path for path in files for key in self._handle(path).keys()}

    def read(self, file: Path, key: str) -> torch.Tensor:
        return self._handle(file).get_tensor(key)

    def __enter__(self) -> _Files:
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()


def hold(model: nn.Module, model_dir: Path, stream: bool = False) -> tuple[list[Held], int]:
    """Put bf16 copies in place of the frozen linear weights (`stream`: every frozen fp32 weight) that equal their
    file's tensor; copy every other CPU tensor of the model out of the file mapping. (held, count of candidates
    kept fp32)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(base, "base_model_prefix", "")
    names: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):  # a tied weight: every name it goes by
        names.setdefault(id(p), []).append(n)
    held, kept = [], 0
    with _Files() as files:
        index = files.keys(model_dir)
        for p in frozen_linear_params(model) + (frozen_stream_params(model) if stream else []):
            found = [k for n in names.get(id(p), []) for k in key_candidates(n, prefix) if k in index]
            if found and torch.equal(files.read(index[found[0]], found[0]).to(device=p.device, dtype=p.dtype), p.data):
                held.append(Held(p, found[0], index[found[0]]))
            else:
                kept += 1
    for h in held:
        h.param.data = h.param.data.to(torch.bfloat16)
    if not held:
        return held, kept
    mine = {id(h.param) for h in held}
    for p in model.parameters():
        if id(p) not in mine and p.device.type == "cpu":
            p.data = p.data.clone()  # out of the file's mapping, so it can be let go
    for module in model.modules():
        for key, buf in module._buffers.items():
            if buf is not None and buf.device.type == "cpu":
                module._buffers[key] = buf.clone()
    return held, kept


def restore(held: list[Held]) -> None:
    """Each held weight back in fp32 from its file, after checking the file still holds what was held."""
    with _Files() as files:
        for h in held:
            weight = files.read(h.file, h.key).to(device=h.param.device, dtype=torch.float32)
            if not torch.equal(weight.to(torch.bfloat16), h.param.data):
                raise ModelError(f"{h.file}: tensor {h.key!r} changed while the run trained; the frozen weight "
                                 "held in bf16 cannot be put back in fp32 (set training.frozen_bf16=false to keep an "
                                 "fp32 copy in memory instead)")
            h.param.data = weight


def applies(cfg, precision: str, world_size: int, stream: bool = True) -> bool:
    """bf16 autocast, and not sharded (FSDP / DeepSpeed hold the weights themselves)."""
    t = cfg.training
    return bool(t.frozen_bf16 or (stream and stream_applies(cfg))) and precision == "bf16" \
        and not (t.distributed in ("fsdp", "deepspeed") and world_size > 1)


STREAM_REFUSED = frozenset({"prefix", "prompt"})  # fp32 virtual tokens / key-value prefixes beside bf16 states


def stream_applies(cfg) -> bool:
    """training.bf16_stream, on a method whose trained tensors do not meet the hidden states as inputs."""
    return bool(cfg.training.bf16_stream) and cfg.method.name not in STREAM_REFUSED


def held_for_trainer(model: nn.Module, cfg, precision: str, log: Callable[[str], None], world_size: int = 1):
    """held_in_bf16 for a TRL preference Trainer (the DPO, KTO, ORPO and SimPO stages): the frozen linear weights
    only (training.frozen_bf16), and only for a method whose checkpoints hold its adapter alone. The Trainer's
    checkpoints of a whole model (full, freeze) would take the held bf16 weights, and its saved peft state can take
    embedding layers, so neither freeze nor bf16_stream's embeddings are held there. Not for GRPO: TRL generates
    outside autocast (fp32 inputs would meet bf16 weights)."""
    from tuneforge.methods import METHODS

    if cfg.training.bf16_stream and precision == "bf16":
        log("training.bf16_stream: not on this stage's Trainer (its checkpoints can save embedding layers); "
            "the frozen linear weights are held in bf16 (training.frozen_bf16) where that is on")
    if METHODS[cfg.method.name].saves_whole_model:
        return nullcontext([])
    return held_in_bf16(model, cfg, precision, log, world_size, stream=False)


@contextmanager
def held_in_bf16(model: nn.Module, cfg, precision: str, log: Callable[[str], None], world_size: int = 1,
                 stream: bool = True) -> Iterator[list[Held]]:
    """Inside: the frozen weights held in bf16 when `applies` (training.bf16_stream's others only when `stream`);
    after, in fp32 again (also on an exception)."""
    if not applies(cfg, precision, world_size, stream):
        yield []
        return
    from tuneforge.models import resolve_model

    model_dir = Path(resolve_model(cfg.model))
    stream = stream and stream_applies(cfg)
    linear = {id(p) for p in frozen_linear_params(model)}
    held, kept = hold(model, model_dir, stream)
    if held or kept:
        n_lin = sum(1 for h in held if id(h.param) in linear)
        n = sum(h.param.numel() for h in held)
        log(f"frozen weights: {n_lin} linear tensors" + (f" and {len(held) - n_lin} others (embeddings, norms: "
                                                          "training.bf16_stream)" if stream else "")
            + f" ({n / 1e6:.1f}M parameters) held in bf16 while training "
            + ("(the hidden states between layers are bf16 as well" if stream else
               "(bf16 autocast rounds them so at every use")
            + f"; fp32 again from {model_dir} after)"
            + (f"; {kept} kept fp32 (not found as they are in the model's files)" if kept else ""))
    try:
        with _no_input_casts(model, stream):
            yield held
    finally:
        restore(held)


@contextmanager
def _no_input_casts(model: nn.Module, on: bool) -> Iterator[None]:
    """peft's cast of an adapter's input to its weight's dtype off (a bf16 state would go fp32 and back)."""
    if not (on and hasattr(model, "peft_config")):
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    with disable_input_dtype_casting(model):
        yield
