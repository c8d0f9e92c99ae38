"""Precision per device, decided in one place: `auto` is bf16 on a GPU that supports it, fp16 (always with a
gradient scaler, in the loop) on one that does not, fp32 on MPS, and on the CPU bf16 autocast where it has
native bf16 (AVX512-BF16 / AMX) that a matmul probe finds at least as fast as fp32, fp32 otherwise. Weights
stay fp32 (the master copy); matmuls run in the low precision under autocast, on the device type set by
use_device (one device per process; the CPU by default).

    precision = resolve_precision(cfg.training.precision, device)
    with autocast(precision): loss = ...
    with bf16_weights(model, precision), autocast(precision): ...  # no_grad work: frozen weights cast once
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import torch
from torch import nn

from tuneforge.errors import ConfigError

_DEVICE_TYPE = ["cpu"]  # autocast's device type for this process (tuneforge.device.select sets it)


def bf16_matmul_speedup(rows: int = 256, shapes: tuple[tuple[int, int], ...] = ((576, 1536), (1536, 576)),
                        reps: int = 4) -> float:
    """fp32 CPU seconds / bf16 CPU seconds of the matmuls of a small model's MLP (SmolLM2-135M's shapes, `rows`
    tokens) on one thread: the cores' own bf16 / fp32 rate (CPU seconds, not wall: other processes move them far
    less; 2 threads measured under load drift towards 1 with OpenMP's waits). Measured on a 2-core Xeon whose
    AVX512-BF16 runs without AMX: 0.58-0.68 (bf16 slower), and a whole LoRA step under bf16 autocast 1.65x
    slower than fp32 (docs/benchmarks.md); AMX machines reach ~4x. ~0.13 CPU s."""
    timings = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            pairs = [(torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)) for k, n in shapes]
            for a, b in pairs:  # warms oneDNN's kernels up
                a @ b
            started = time.process_time()
            for _ in range(reps):
                for a, b in pairs:
                    a @ b
            timings[dtype] = time.process_time() - started
    torch.set_num_threads(threads)
    return timings[torch.float32] / max(timings[torch.bfloat16], 1e-9)


@cache
def cpu_has_bf16() -> bool:
    """Native bf16 (AVX512-BF16 / AMX) whose matmuls are also at least as fast as fp32's here: not every such CPU's
    are (a Xeon without AMX: 0.6x fp32, a LoRA step 1.65x slower; bf16_matmul_speedup below)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and bf16_matmul_speedup() >= 1.0


def use_device(device: torch.device) -> None:
    _DEVICE_TYPE[0] = device.type


def resolve_precision(precision: str, device: torch.device | None = None) -> str:
    kind = device.type if device is not None else _DEVICE_TYPE[0]
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if kind == "mps":
            return "fp32"
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp16" and kind != "cuda":
        raise ConfigError(f"key 'training.precision': fp16 is for CUDA GPUs without bf16 (trained with a gradient "
                          f"scaler); this run's device is {kind}: use auto, bf16 or fp32")
    return precision


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """Weights stay fp32 (the master copy); matmuls run in bf16 / fp16 under autocast."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(_DEVICE_TYPE[0], dtype=dtype)
    return contextlib.nullcontext()


def grad_scaler(precision: str) -> torch.amp.GradScaler | None:
    """fp16 never trains without one (small gradients underflow); bf16 and fp32 need none."""
    return torch.amp.GradScaler(_DEVICE_TYPE[0]) if precision == "fp16" else None


def free_bytes(model) -> int:
    """Free memory where the model is: the GPU's (torch.cuda.mem_get_info), else the machine's (MemAvailable in
    /proc/meminfo); 0 where neither can be read."""
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, RuntimeError, StopIteration):
        pass
    return 0


def dora_bases(model: nn.Module) -> list[nn.Module]:
    """The base layers under DoRA modules (DoRA adds the base weight to the LoRA product outside a matmul)."""
    return [m.base_layer for m in model.modules()
            if len(getattr(m, "lora_magnitude_vector", ())) and hasattr(m, "base_layer")]


def _held_linears(model: nn.Module) -> list[nn.Linear]:
    """Linear layers whose weight is a frozen plain fp32 tensor: not peft's adapter layers (peft casts their
    input to their weight's dtype), not DoRA's base layers, not sharded or quantized weights."""
    dora = {id(m) for m in dora_bases(model)}
    out = []
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or id(module) in dora or "lora_" in name or w is None:
            continue
        if not w.requires_grad and w.dtype == torch.float32 and type(w.data) is torch.Tensor and w.numel() \
                and not hasattr(w, "ds_id"):
            out.append(module)
    return out


@contextlib.contextmanager
def bf16_weights(model: nn.Module, precision: str) -> Iterator[int]:
    """Under bf16, the frozen fp32 linear layers' weights and biases swapped for their bf16 casts (autocast's
    linear casts all three operands to bf16, so its result is unchanged), the originals put back after, tied
    weights too (the swap is of the layer's attribute, an embedding sharing the tensor keeps it). The bf16 copies
    sit beside the fp32 weights (half their bytes again), so nothing is swapped unless they fit in a quarter of the
    free memory (a 7B model's 13 GB of copies are not made on a machine with 30 GB free). Yields how many layers
    were swapped; nothing at fp32 or fp16."""
    layers = _held_linears(model) if precision == "bf16" else []
    extra = sum(2 * m.weight.numel() for m in layers)
    if extra > free_bytes(model) // 4:  # the copies sit beside the fp32 weights: only where they fit with room
        layers = []
    saved = [(m, m.weight, m.bias) for m in layers]
    try:
        for m, w, b in saved:
            m.weight = nn.Parameter(w.detach().to(torch.bfloat16), requires_grad=False)
            if b is not None and not b.requires_grad and b.dtype == torch.float32:
                m.bias = nn.Parameter(b.detach().to(torch.bfloat16), requires_grad=False)
        yield len(saved)
    finally:
        for m, w, b in saved:
            m.weight, m.bias = w, b
