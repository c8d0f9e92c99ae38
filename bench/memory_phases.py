"""Where the benchmark's peak RSS comes from (docs/benchmarks.md, "Memory"): runs one recipe of bench_sft.py in
this process, samples RSS every 5 ms in a thread beside glibc's mallinfo2 (heap in use + malloc's own mmapped
blocks; Linux/glibc only), and prints each phase's RSS at its end, RSS peak and live-malloc peak, plus what sits
free inside the heap afterwards.

    python bench/memory_phases.py                      # the tuneforge recipe, one epoch, 1 thread
    python bench/memory_phases.py --recipe tuneforge-trim
    python bench/memory_phases.py --model /tmp/tiny --max-steps 1 --json /tmp/m.json   # tests
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sft  # noqa: E402
import torch  # noqa: E402
from env_record import environment  # noqa: E402
from sftbench.data import encode, eval_loss, load_rows, split_rows  # noqa: E402
from sftbench.recipes import RECIPES  # noqa: E402

ALLOCATOR_ENV = ("MALLOC_", "GLIBC_TUNABLES", "ONEDNN_", "LRU_CACHE")  # glibc's malloc, oneDNN's kernel caches


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2


def malloc_mb() -> tuple[float, float]:
    """(in use incl. malloc's mmapped blocks, free inside the heap) in MB."""
    m = _libc.mallinfo2()
    return (m.uordblks + m.hblkhd) / 2**20, m.fordblks / 2**20


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Sampler:
    def __init__(self) -> None:
        self.peak = self.live_peak = 0.0
        self.since = time.perf_counter()
        self.phases: list[dict] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb())
            self.live_peak = max(self.live_peak, malloc_mb()[0])
            time.sleep(0.005)

    def phase(self, name: str) -> None:
        live, free = malloc_mb()
        now = time.perf_counter()
        row = {"phase": name, "rss_end_mb": rss_mb(), "rss_peak_mb": max(self.peak, rss_mb()),
               "live_peak_mb": max(self.live_peak, live), "live_end_mb": live, "heap_free_end_mb": free,
               "seconds": now - self.since}
        self.since = now
        self.phases.append(row)
        print(" | ".join([name] + [f"{k} {v:,.0f}" for k, v in row.items() if k != "phase"]), flush=True)
        self.peak, self.live_peak = rss_mb(), live


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="tuneforge", choices=sorted(RECIPES))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--max-steps", default="0", help="0: one epoch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the phases here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sampler = Sampler()
    from transformers import AutoTokenizer

    from tuneforge.models.load import resolve_model

    common = bench_sft.common(bench_sft.parse_args(["--model", args.model, "--max-steps", args.max_steps,
                                                    "--threads", str(args.threads)]))
    sampler.phase("imports")
    tok = AutoTokenizer.from_pretrained(resolve_model(common.model))
    train, evals = split_rows(load_rows())
    examples = [encode(tok, s, common.max_len) for s in evals]
    with tempfile.TemporaryDirectory() as tmp:
        setup = RECIPES[args.recipe](train, tok, tmp, common)
        sampler.phase("model + data")
        base = eval_loss(setup.model, examples)
        sampler.phase("base eval")
        setup.fit()
        sampler.phase(f"training, {setup.steps()} steps")
        tuned = eval_loss(setup.model, examples)
        sampler.phase("tuned eval")
    if args.json:
        Path(args.json).write_text(json.dumps({"recipe": args.recipe, "model": args.model, "threads": args.threads,
                                               "eval_loss_base": base, "eval_loss": tuned,
                                               "malloc_env": {k: v for k, v in os.environ.items()
                                                              if k.startswith(ALLOCATOR_ENV)},
                                               "phases": sampler.phases, "environment": environment()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
