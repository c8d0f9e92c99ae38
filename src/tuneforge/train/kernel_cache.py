"""Bounding oneDNN's kernel caches on the CPU (training.kernel_cache_entries).

PyTorch runs the CPU's bf16 matmuls through oneDNN, which compiles a kernel for each shape it meets and keeps it in
two caches: oneDNN's own primitive cache and ideep's (PyTorch's oneDNN wrapper) LRU cache, 1,024 entries each by
default. Padding-free packed rows change length at every step, so every step adds kernels for shapes that rarely
come back (~0.5-1 MB each with their buffers): the process's live memory grows step after step until both caches
are full, and the growth fragments the heap the activations live in. Measured on the benchmark's LoRA SFT of the
embedded default (bench/memory_phases.py, 35 steps, bf16 autocast; docs/benchmarks.md "Memory"): live memory
after training 957 MB with the default caches, 369 MB with 64 entries each, and peak RSS 2,522 -> 1,712 MB, with
no slower step (a step's own shapes still fit: every layer shares them). fp32 matmuls go through MKL, not these
caches, so fp32 training is unaffected either way.

Both caches read their capacity from the environment when they are first used, so the bound must be set before the
process's first oneDNN matmul: a stage sets it as it begins, before the precision probe. A capacity the user
exported (ONEDNN_PRIMITIVE_CACHE_CAPACITY, LRU_CACHE_CAPACITY) wins over the key.

    bound_kernel_caches(64)    # before the first matmul: at most 64 kernels in each cache
"""

from __future__ import annotations

import os

CAPACITY_ENV = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches(entries: int | None) -> dict[str, str]:
    """Set each cache's capacity to `entries` where the environment does not already name one (None: leave the
    libraries' defaults). Returns the capacities the environment now names."""
    if entries is not None:
        for name in CAPACITY_ENV:
            os.environ.setdefault(name, str(entries))
    return {name: os.environ[name] for name in CAPACITY_ENV if name in os.environ}
