"""Handing freed CPU memory back to the system after each optimizer step (training.trim_memory).

A training step on the CPU allocates activations of a different size at every step (packed rows vary in
length), and glibc's malloc keeps what is freed in its heap for reuse: sizes that do not fit again are kept
anyway, so the process's resident memory climbs over the run. Measured on the benchmark's LoRA SFT of the
embedded default (bench/bench_sft.py, 35 steps): peak live allocations 1.6 GB, but 1.4 GB more sat free in the
heap after training, and peak RSS was 3.3 GB; `malloc_trim(0)` after each step returns the free pages: peak RSS
0.84x, but training 0.87x as fast (the next step faults the pages back in), so it is off by default
(docs/benchmarks.md, "Memory"). Elsewhere (macOS, musl, Windows) there is no malloc_trim and this does nothing.

    if trim: release_free_memory()

`training.mmap_threshold_kb` (off by default) is the other way: blocks of at least that size are mapped apart from
the heap (glibc's M_MMAP_THRESHOLD; its dynamic threshold otherwise rises to 32 MB after the first large free, so
activation-sized blocks land in the heap) and go back to the system the moment they are freed, so they cannot
leave holes in it. Measured on the benchmark's LoRA SFT (bench/memory_phases.py, docs/benchmarks.md "Memory"):
1 MB took 0.30 GB off the peak RSS, 512 KB 0.40 GB but training 1.2x slower (each mapping's pages are faulted in
again), 256 KB 1.6x slower.

    limit_heap_blocks(1024)    # before training: blocks >= 1 MB mapped apart from the heap
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _libc(name: str, *argtypes: type) -> Callable[..., int] | None:
    """`name` from the C library this process already uses (int result), or None where it has none (not glibc)."""
    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = list(argtypes), ctypes.c_int
    return fn


def _malloc_trim() -> Callable[[int], int] | None:
    return _libc("malloc_trim", ctypes.c_size_t)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def limit_heap_blocks(kb: int) -> bool:
    """Map blocks of at least `kb` KB apart from the heap, and keep the heap's top (glibc: setting the mmap
    threshold stops both thresholds adapting; the trim threshold is set high so the heap top is not handed back
    and faulted in again at every step). True if glibc took both."""
    fn = _libc("mallopt", ctypes.c_int, ctypes.c_int)
    if fn is None:
        return False
    return bool(fn(M_MMAP_THRESHOLD, kb * 1024)) and bool(fn(M_TRIM_THRESHOLD, 256 * 2**20))


def available() -> bool:
    return _malloc_trim() is not None


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; True if any were released."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
