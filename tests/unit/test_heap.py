"""training.trim_memory (tuneforge/train/heap.py): after each CPU optimizer step the heap's free pages go back
to the system. Proven in a fresh process (so pytest's own heap does not blur it): memory freed inside glibc's
heap stays resident until release_free_memory(), which gives it back; in the loop the release runs once per
optimizer step and changes nothing that is computed (per-step losses and trained weights bit-identical with it
on and off); with the key off it runs once, when training ends."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
from tuneforge.train import heap
from tuneforge.train import loop as loop_mod

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# 8 MB malloc + free raises glibc's mmap threshold above 1 MB, so the 1 MB blocks below come from the heap; every
# 10th stays allocated, so the freed ones are holes inside the heap (what varying activation sizes leave), which
# free() cannot trim from the top: only malloc_trim's release of free pages inside the heap returns them.
_PRELUDE = r"""
import ctypes, os, sys
sys.path[:0] = [{src!r}]
from tuneforge.train import heap
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.malloc.argtypes = [ctypes.c_size_t]
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
def holes(size, count):  # `count` blocks of `size` bytes written, then all freed but every 10th
    blocks = [libc.malloc(size) for _ in range(count)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for i, b in enumerate(blocks):
        if i % 10:
            libc.free(b)
"""
_PROBE = _PRELUDE + r"""
libc.free(libc.malloc(8 << 20))
holes(1 << 20, 200)
before = rss_mb()
released = heap.release_free_memory()
print(before, rss_mb(), released)
"""


def _probe(text: str, **fields) -> list[str]:
    """Run a probe in a fresh Python (pytest's own heap would blur it); its printed words."""
    src = str(Path(heap.__file__).parents[2])
    out = subprocess.run([sys.executable, "-c", text.format(src=src, **fields)], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's; elsewhere release_free_memory does nothing")
def test_release_returns_the_heaps_free_pages_to_the_system():
    before, after, released = _probe(_PROBE)
    assert released == "True"
    assert float(before) - float(after) >= 150, (before, after)  # 180 MB were freed inside the heap


def test_available_where_glibc_is():
    """glibc has malloc_trim; elsewhere (macOS, musl) there is none, and releasing is a no-op saying so."""
    assert heap.available() == GLIBC
    if not GLIBC:
        assert heap.release_free_memory() is False


def _trained(make_config, tmp_path, trim: bool, monkeypatch):
    calls = []
    monkeypatch.setattr(loop_mod.heap, "release_free_memory", lambda: calls.append(1) or True)
    cfg = make_config(training__max_steps=5, training__trim_memory=trim, training__learning_rate=1e-2,
                      output_dir=str(tmp_path / f"run-{trim}"))
    model, result, _ = tiny.train_checked(cfg)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return [h["loss"] for h in result.history], trained, len(calls)


def test_the_loop_releases_once_per_step_and_computes_the_same(make_config, tmp_path, monkeypatch):
    """With the key: once per optimizer step. Without: once, when training ends (before the evaluation and the
    fp32 weights of training.frozen_bf16 are allocated over the steps' fragmented heap)."""
    on_losses, on_weights, on_calls = _trained(make_config, tmp_path, True, monkeypatch)
    off_losses, off_weights, off_calls = _trained(make_config, tmp_path, False, monkeypatch)
    assert (on_calls, off_calls) == (5 + 1, 1)
    assert on_losses == off_losses and all(map(lambda v: v == v, on_losses))  # finite, identical
    assert on_losses[-1] < on_losses[0]  # it trains
    assert on_weights.keys() == off_weights.keys() and on_weights
    assert all(torch.equal(on_weights[n], off_weights[n]) for n in on_weights)


# training.mmap_threshold_kb: 2 MB blocks, freed but every 10th, after the dynamic threshold rose to 8 MB; with the
# limit (1 MB) they were mapped apart from the heap and went back when freed, without it they are holes in the heap
_LIMIT_PROBE = _PRELUDE + r"""
libc.free(libc.malloc(8 << 20))
took = heap.limit_heap_blocks(1024) if {limit} else None
base = rss_mb()
holes(2 << 20, 100)
print(rss_mb() - base, took)
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_mmap_threshold_returns_large_blocks_when_freed():
    def grown(limit: bool) -> tuple[float, str]:
        mb, took = _probe(_LIMIT_PROBE, limit=limit)
        return float(mb), took

    (held, _), (limited, took) = grown(False), grown(True)
    assert took == "True"
    assert held >= 150 and limited <= 40, (held, limited)  # 180 MB freed: kept as holes vs returned; 20 MB in use


def test_the_loop_sets_the_threshold_from_the_key_and_computes_the_same(make_config, tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(loop_mod.heap, "limit_heap_blocks", lambda kb: calls.append(kb) or True)

    def run(kb):
        cfg = make_config(training__max_steps=4, training__mmap_threshold_kb=kb, training__learning_rate=1e-2,
                          output_dir=str(tmp_path / f"run-{kb}"))
        return [h["loss"] for h in tiny.train_checked(cfg)[1].history]

    assert run(1024) == run(None) and calls == [1024]
