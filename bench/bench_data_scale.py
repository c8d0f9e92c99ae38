"""Data at scale (issue 17): continued pre-training on generated corpora of growing size, each run a fresh
`stage: pretrain` process (the embedded SmolLM2-135M, LoRA, a few steps): time to the first training step,
tokenization rate, peak RSS after the data is ready (building the token cache) and at the end (training), and
the same on a second run that reuses the cache. With --compare-memory, the smallest corpus also runs through
the old in-memory path (records and token ids in Python lists) side by side, and the ratios are printed.

    python scripts/make_pretrain_corpus.py --size-mb 100 --out /tmp/c100.jsonl
    nice python bench/bench_data_scale.py /tmp/c100.jsonl /tmp/c1024.jsonl --compare-memory --steps 3

Each run gets its own TUNEFORGE_HOME (the models directory linked from the usual one), so the first run of a
corpus always builds its cache. Prints one markdown row per run and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(mode: str, corpus: str, out: str, steps: int, t0: float) -> dict:
    """One run in this process; timestamps are seconds since the parent started it (`t0`, wall clock)."""
    import tuneforge.stages.skeleton as skeleton
    import tuneforge.train.loop as loop
    from tuneforge.config.schema import Config
    from tuneforge.data import stage_data
    from tuneforge.stages import STAGES

    marks: dict = {"imported_s": time.time() - t0}
    load_data, forward_backward = skeleton.load_data, loop.forward_backward

    def timed_load_data(run):
        data = load_data(run)
        marks["data_ready_s"] = time.time() - t0
        marks["rss_data_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        marks["train_sequences"] = len(data.train)
        return data

    def timed_forward_backward(*args, **kwargs):
        result = forward_backward(*args, **kwargs)
        marks.setdefault("first_step_s", time.time() - t0)
        return result

    skeleton.load_data, loop.forward_backward = timed_load_data, timed_forward_backward
    if mode == "memory":  # today's path before the cache: every record and token id in Python lists
        from tuneforge.data.dataset import load_train_eval_records

        def in_memory(cfg, tokenizer, log):
            train_records, eval_records = load_train_eval_records(cfg, log)
            train, stats = stage_data.load_stage_examples(cfg, tokenizer, train_records)
            return train, stats, eval_records

        stage_data.load_cached_train_eval = in_memory
    cfg = Config.model_validate({
        "model": "smollm2-135m-instruct", "stage": "pretrain", "method": {"name": "lora", "r": 8},
        "data": {"train": corpus}, "output_dir": out, "seed": 0,
        "training": {"max_steps": steps, "batch_size": 4, "max_length": 256, "learning_rate": 1e-4,
                     "progress": False, "report_to": [], "warmup_steps": 0},
        "eval": {"before": False, "generate_samples": 0}})
    logs: list[str] = []
    STAGES["pretrain"](cfg, log=logs.append)
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    built = next((line for line in logs if line.startswith("data cache: built")), "")
    return {**marks, "wall_s": time.time() - t0, "rss_peak_mb": metrics["train"]["peak_rss_mb"],
            "train_tokens_per_s": metrics["train"]["tokens_per_second"],
            "corpus_tokens": metrics["data"]["train"]["corpus_tokens"], "tokens": metrics["data"]["train"]["tokens"],
            "reused": any(line.startswith("data cache: reused") for line in logs),
            "cache_tok_per_s": int(built.rsplit("(", 1)[-1].split(" ")[0].replace(",", "")) if built else None}


def run_child(mode: str, corpus: Path, home: Path, steps: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-run-"))
    env = {**os.environ, "TUNEFORGE_HOME": str(home)}
    t0 = time.time()
    cmd = [sys.executable, __file__, "--child", mode, "--out", str(out / "run"), "--steps", str(steps),
           "--t0", repr(t0), str(corpus)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode:
        raise SystemExit(f"{mode} run on {corpus} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_line() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return (f"{model}, {os.cpu_count()} cores, flags {' '.join(wanted) or '-'}, load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, python {platform.python_version()}")


COLUMNS = ("corpus", "MB", "run", "corpus tokens", "tokens used", "cache tok/s", "data ready s", "first step s",
           "RSS data MB", "RSS peak MB", "train tok/s")


def row(corpus: Path, label: str, r: dict) -> str:
    cells = (corpus.name, f"{corpus.stat().st_size / 2**20:.0f}", label, f"{r['corpus_tokens']:,}", f"{r['tokens']:,}",
             f"{r['cache_tok_per_s']:,}" if r["cache_tok_per_s"] else ("reused" if r["reused"] else "-"),
             f"{r['data_ready_s']:.1f}", f"{r['first_step_s']:.1f}", f"{r['rss_data_mb']:.0f}",
             f"{r['rss_peak_mb']:.0f}", f"{r['train_tokens_per_s']:.0f}")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpora", nargs="+")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--compare-memory", action="store_true", help="also run the smallest corpus in memory")
    p.add_argument("--child", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--t0", type=float, default=0.0)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.corpora[0], a.out, a.steps, a.t0)))
        return
    print(f"CPU: {cpu_line()}")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    models = Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".cache" / "tuneforge") / "models"
    results = {}
    for i, corpus in enumerate(map(Path, a.corpora)):
        home = Path(tempfile.mkdtemp(prefix="bench-home-"))
        (home / "models").symlink_to(models)
        try:
            runs = [("first (builds cache)", "cache"), ("second (reuses)", "cache")]
            if a.compare_memory and i == 0:
                runs.append(("in-memory (old path)", "memory"))
            for label, mode in runs:
                results[(corpus.name, label)] = r = run_child(mode, corpus, home, a.steps)
                print(row(corpus, label, r), flush=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    if a.compare_memory:
        name = Path(a.corpora[0]).name
        cached, second, memory = (results[(name, k)] for k in ("first (builds cache)", "second (reuses)",
                                                               "in-memory (old path)"))
        print(f"\n{name}: cache / in-memory: peak RSS {cached['rss_peak_mb'] / memory['rss_peak_mb']:.2f}x, "
              f"time to first step {cached['first_step_s'] / memory['first_step_s']:.2f}x (first run), "
              f"{second['first_step_s'] / memory['first_step_s']:.2f}x (second run), training tok/s "
              f"{cached['train_tokens_per_s'] / memory['train_tokens_per_s']:.2f}x / "
              f"{second['train_tokens_per_s'] / memory['train_tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
