"""bf16 autocast where the CPU has native bf16 (AVX512-BF16 / AMX); fp32 otherwise."""

from __future__ import annotations

import contextlib
from functools import cache
from pathlib import Path

import torch


@cache
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return precision


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """Weights stay fp32 (the master copy); matmuls run in bf16 under autocast."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
