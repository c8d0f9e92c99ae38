"""Which on-disk format the tokenized data cache uses: numpy .npy token files read with np.load(mmap_mode="r")
(flat int32 tokens + int64 offsets) vs the `datasets` library's Arrow files (Dataset.from_generator, read back
memory-mapped with Dataset.from_file). Each backend runs in a fresh process: build time (streaming writes of
random sequences), peak RSS while building, open time, and random-access reads (`ex[i]` -> list of ints, as
the training loop asks for them).

    python bench/bench_token_store.py                      # 20M tokens, 20k random reads
    python bench/bench_token_store.py --tokens 5e6 --reads 5000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def sequences(n_tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_tokens:
        n = int(rng.integers(16, 600))
        yield rng.integers(0, 49152, n, dtype=np.int32)
        done += n


def build_numpy(out: Path, n_tokens: int) -> None:
    from tuneforge.data.token_store import TokenWriter

    with TokenWriter(out) as writer:
        for seq in sequences(n_tokens):
            writer.add(seq)


def read_numpy(out: Path):
    from tuneforge.data.token_store import TokenReader

    reader = TokenReader(out)
    return len(reader), lambda i: reader.tokens(i).tolist()


def build_arrow(out: Path, n_tokens: int) -> None:
    import datasets

    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})
    ds = datasets.Dataset.from_generator(lambda: ({"input_ids": s} for s in sequences(n_tokens)),
                                         features=features, cache_dir=str(out / "hf"), keep_in_memory=False)
    ds.save_to_disk(str(out / "arrow"))


def read_arrow(out: Path):
    import datasets

    ds = datasets.load_from_disk(str(out / "arrow"))
    return len(ds), lambda i: ds[int(i)]["input_ids"]


def child(backend: str, out: Path, n_tokens: int, reads: int) -> dict:
    build, read = (build_numpy, read_numpy) if backend == "numpy" else (build_arrow, read_arrow)
    t0 = time.perf_counter()
    build(out, n_tokens)
    built = time.perf_counter() - t0
    rss_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    n, get = read(out)
    opened = time.perf_counter() - t0
    idx = np.random.default_rng(1).integers(0, n, reads)
    t0 = time.perf_counter()
    total = sum(len(get(i)) for i in idx)
    read_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"backend": backend, "sequences": n, "build_s": round(built, 2), "rss_build_mb": round(rss_build),
            "open_s": round(opened, 3), "reads_per_s": round(reads / read_s),
            "tokens_read_per_s": round(total / read_s), "disk_mb": round(size / 2**20)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=float, default=20e6)
    p.add_argument("--reads", type=int, default=20000)
    p.add_argument("--child", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, Path(a.out), int(a.tokens), a.reads)))
        return
    rows = []
    for backend in ("numpy", "arrow"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--child", backend, "--out", tmp, "--tokens", str(a.tokens),
                   "--reads", str(a.reads)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.splitlines()[-1]))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    n, a_ = rows
    print(f"numpy / arrow: build time {n['build_s'] / a_['build_s']:.2f}x, "
          f"reads/s {n['reads_per_s'] / a_['reads_per_s']:.1f}x, "
          f"build RSS {n['rss_build_mb'] / a_['rss_build_mb']:.2f}x")


if __name__ == "__main__":
    main()
