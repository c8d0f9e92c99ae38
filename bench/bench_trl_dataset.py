"""Peak RSS of building the datasets.Dataset a TRL stage hands its trainer (dpo), side by side: the Arrow file
written by streaming the token cache and memory-mapped (data.trl_dataset, first build and reuse) vs the old
in-memory path (`Dataset.from_list` of every pair's row). A generated preference-pair file is tokenized once
into the token cache by the tiny test tokenizer (tests/tiny.py); each path then runs in a fresh process that
opens the cache (its RSS then is the floor), builds the dataset and reads every row once (as training does).

    python bench/bench_trl_dataset.py                   # 100k pairs
    python bench/bench_trl_dataset.py --pairs 20000 --out /tmp/trl_bench
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("arrow", "arrow (reuse)", "in-memory list")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def config(out: Path):
    from tuneforge.config.schema import Config

    return Config.model_validate({
        "model": str(out / "tiny"), "stage": "dpo", "method": {"name": "lora"},
        "data": {"train": str(out / "pairs.jsonl")},
        "training": {"max_length": 256, "progress": False, "batch_size": 8},
        "output_dir": str(out / "run"), "seed": 0})


def setup(out: Path, pairs: int) -> dict:
    """The tiny tokenizer, the pair file and its token cache (built once, here)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny

    if not (out / "tiny" / "tokenizer.json").is_file():
        tiny.build_tiny(out / "tiny")
    path = out / "pairs.jsonl"
    if not path.is_file():
        rng = random.Random(0)
        words = tiny.WORDS[3:]
        with open(path, "w") as f:
            for _ in range(pairs):
                chosen = " ".join(rng.choices(words, k=rng.randint(20, 40)))
                rejected = " ".join(rng.choices(words, k=rng.randint(20, 40)))
                prompt = " ".join(rng.choices(words, k=rng.randint(8, 16)))
                f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    from tuneforge.data.stage_cache import load_cached_split
    from tuneforge.models import load_tokenizer

    cfg = config(out)
    started = time.perf_counter()
    split = load_cached_split(cfg, load_tokenizer(cfg.model), lambda _m: None)
    return {"pairs": len(split.train), "file_mb": round(path.stat().st_size / 2**20, 1),
            "cache_seconds": round(time.perf_counter() - started, 1)}


def measure(out: Path, mode: str) -> dict:
    """In this process: open the cache, build the dataset by `mode`, read every row once."""
    from datasets import Dataset

    from tuneforge.data.stage_cache import load_cached_split
    from tuneforge.data.trl_dataset import trl_dataset
    from tuneforge.models import load_tokenizer

    cfg = config(out)
    examples = load_cached_split(cfg, load_tokenizer(cfg.model), lambda _m: None).train
    floor = peak_mb()
    logs: list[str] = []
    started, cpu = time.perf_counter(), time.process_time()
    if mode == "in-memory list":
        dataset = Dataset.from_list([e.row() for e in examples])
    else:
        dataset = trl_dataset(examples, "dpo", lambda: (e.row() for e in examples), logs.append)
    built, built_cpu = time.perf_counter() - started, time.process_time() - cpu
    after_build = peak_mb()
    tokens = sum(len(dataset[i]["chosen_ids"]) for i in range(len(dataset)))  # one pass, as an epoch reads
    return {"mode": mode, "rows": len(dataset), "tokens_chosen": tokens, "floor_mb": round(floor, 1),
            "peak_build_mb": round(after_build, 1), "peak_read_mb": round(peak_mb(), 1),
            "rss_end_mb": round(current_mb(), 1), "build_s": round(built, 2), "build_cpu_s": round(built_cpu, 2),
            "on_disk": bool(dataset.cache_files), "log": logs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "trl_dataset.json")
    parser.add_argument("--child", nargs=2, metavar=("OUT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), args.child[1])))
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="trl-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TUNEFORGE_DATA_CACHE": str(out / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    os.environ.update(env)
    info = setup(out, args.pairs)
    rows = []
    for mode in MODES:
        done = subprocess.run([sys.executable, __file__, "--child", str(out), mode], env=env, check=True,
                              capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"# DPO trainer dataset, {info['pairs']:,} pairs ({info['file_mb']} MB JSONL), tiny tokenizer; "
          f"load {os.getloadavg()[0]:.1f}")
    print("| path | rows | RSS after opening the cache MB | peak building MB | peak after reading every row MB | "
          "build s (CPU s) | on disk |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['rows']:,} | {r['floor_mb']:.0f} | {r['peak_build_mb']:.0f} "
              f"| {r['peak_read_mb']:.0f} | {r['build_s']} ({r['build_cpu_s']}) | {r['on_disk']} |")
    arrow, memory = rows[0], rows[2]
    growth = {r["mode"]: r["peak_read_mb"] - r["floor_mb"] for r in rows}
    print(f"peak RSS ratio arrow / in-memory: {arrow['peak_read_mb'] / memory['peak_read_mb']:.2f}x "
          f"({arrow['peak_read_mb']:.0f} vs {memory['peak_read_mb']:.0f} MB); growth above the floor "
          f"{growth['arrow']:.0f} vs {growth['in-memory list']:.0f} MB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"setup": info, "rows": rows, "load": os.getloadavg(),
                                     "command": " ".join(sys.argv)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
