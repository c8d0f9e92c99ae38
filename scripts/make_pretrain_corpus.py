"""Generate a large pretraining corpus (JSONL, one {"text": ...} document per line) of a given size, for the data
scale benchmark (bench/bench_data_scale.py): documents of Zipf-distributed words from a 5,000-word vocabulary,
lengths log-normal around ~400 words (~2.4 KB, so about half of them exceed 512 tokens), deterministic in the seed.

    python scripts/make_pretrain_corpus.py --size-mb 100 --out /tmp/corpus-100mb.jsonl
    python scripts/make_pretrain_corpus.py --size-mb 1024 --out /tmp/corpus-1gb.jsonl --seed 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "so", "vi", "de", "pa", "ri", "xo", "bel", "tor", "ven", "ash",
             "qu", "il", "om", "es"]


def vocabulary(rng: np.random.Generator, n: int = 5000) -> np.ndarray:
    words = {"".join(rng.choice(SYLLABLES, size=int(rng.integers(1, 4)))) for _ in range(n * 3)}
    return np.array(sorted(words)[:n])


def documents(size_bytes: int, seed: int = 0):
    """Yield JSONL lines until `size_bytes` are written."""
    rng = np.random.default_rng(seed)
    words = vocabulary(rng)
    ranks = np.arange(1, len(words) + 1)
    p = (1.0 / ranks) / (1.0 / ranks).sum()  # Zipf: a few words are very common, as in text
    written = 0
    while written < size_bytes:
        n_words = max(8, int(rng.lognormal(mean=5.8, sigma=0.7)))
        picked = words[rng.choice(len(words), size=n_words, p=p)]
        sentences = np.array_split(picked, max(1, n_words // 12))
        text = " ".join(" ".join(s).capitalize() + "." for s in sentences)
        line = json.dumps({"text": text}) + "\n"
        written += len(line.encode())
        yield line


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    started = time.perf_counter()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with out.open("w") as f:
        for line in documents(int(a.size_mb * 2**20), a.seed):
            f.write(line)
            n += 1
    print(f"{out}: {n:,} documents, {out.stat().st_size / 2**20:.1f} MB in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
