"""Handing freed CPU memory back to the system after each optimizer step (training.trim_memory).

A training step on the CPU allocates activations of a different size at every step (packed rows vary in
length), and glibc's malloc keeps what is freed in its heap for reuse: sizes that do not fit again are kept
anyway, so the process's resident memory climbs over the run. Measured on the benchmark's LoRA SFT of the
embedded default (bench/bench_sft.py, 35 steps): peak live allocations 1.6 GB, but 1.4 GB more sat free in the
heap after training, and peak RSS was 3.3 GB; `malloc_trim(0)` after each step returns the free pages: peak RSS
0.84x, but training 0.87x as fast (the next step faults the pages back in), so it is off by default
(docs/benchmarks.md, "Memory"). Elsewhere (macOS, musl, Windows) there is no malloc_trim and this does nothing.

    if trim: release_free_memory()
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the C library this process already uses
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def available() -> bool:
    return _malloc_trim() is not None


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; True if any were released."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
