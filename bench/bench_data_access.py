"""Does reading examples from the memory-mapped token cache slow training (issue 17: "training tokens/s unchanged
from today's in-memory path")? The only difference between the two paths inside a training step is how the step's
examples are fetched: `examples[i]` from Python lists (the old in-memory path) or from the memory-mapped cache
(data.token_cache.CachedExamples). This script builds both from the same corpus, checks that they hold the same
examples, and times, interleaved in one process, fetching and collating the same seeded random batches (the loop's
own collate: packed rows) from each; with --step it also times LoRA training steps on the embedded default on
batches from each path, so the data cost can be read against a step's.

    python bench/bench_data_access.py /tmp/c100.jsonl --records 20000 --batches 300 --reps 5 --step 3 \
        --json bench/results/data_access.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def build(corpus: Path, records: int, work: Path, model: str = "smollm2-135m-instruct"):
    """(run, cached examples, in-memory examples) of the first `records` documents of `corpus`: the cached ones
    through tuneforge's own skeleton (as `tuneforge train` reads them), the others through the old in-memory path."""
    import tuneforge.stages.skeleton as skeleton
    from tuneforge.config.schema import Config
    from tuneforge.data.dataset import load_train_eval_records
    from tuneforge.data.stage_data import load_stage_examples

    head = work / "head.jsonl"
    with open(corpus, encoding="utf-8") as src, open(head, "w", encoding="utf-8") as dst:
        dst.writelines(itertools.islice(src, records))
    os.environ["TUNEFORGE_DATA_CACHE"] = str(work / "cache")
    cfg = Config.model_validate({
        "model": model, "stage": "pretrain", "method": {"name": "lora", "r": 8},
        "data": {"train": str(head)}, "output_dir": str(work / "run"), "seed": 0,
        "training": {"batch_size": 4, "max_length": 256, "progress": False, "report_to": [], "precision": "fp32"},
        "eval": {"before": False, "generate_samples": 0}})
    run = skeleton.begin(cfg, lambda _m: None)
    cached = skeleton.load_data(run).train
    train_records, _ = load_train_eval_records(cfg, lambda _m: None)
    in_memory, _ = load_stage_examples(cfg, run.tokenizer, train_records)
    return run, cached, in_memory


def same_examples(a, b, n: int = 200) -> bool:
    if len(a) != len(b):
        return False
    picks = random.Random(1).sample(range(len(a)), min(n, len(a)))
    return all(a[i].input_ids == b[i].input_ids and a[i].labels == b[i].labels for i in picks)


def time_fetch(paths: dict, batches: list[list[int]], collate, reps: int) -> dict:
    """CPU seconds per batch (fetch + collate) of each path, rep by rep, the paths interleaved within each rep."""
    per_rep: dict = {name: [] for name in paths}
    for _ in range(reps):
        for name, examples in paths.items():
            started = time.process_time()
            for idx in batches:
                collate([examples[i] for i in idx])
            per_rep[name].append((time.process_time() - started) / len(batches))
    return per_rep


def time_steps(run, paths: dict, batches: list[list[int]], steps: int, collate) -> dict:
    """CPU seconds of LoRA training steps (forward + backward, fp32, one thread) on the same batches from each path,
    interleaved; the embedded default through the skeleton, as a run builds it."""
    import torch

    import tuneforge.stages.skeleton as skeleton
    from tuneforge.train.loss import loss_sum

    torch.set_num_threads(1)
    skeleton.open_output(run)
    model, _ = skeleton.apply_method(run, skeleton.load_base(run))
    model.train()
    out: dict = {name: [] for name in paths}
    for step in range(steps + 1):  # the first round warms oneDNN up and is not counted
        for name, examples in paths.items():
            started = time.process_time()
            for batch in collate([examples[i] for i in batches[step % len(batches)]]):
                loss_sum(model, batch).backward()
            model.zero_grad(set_to_none=True)
            if step:
                out[name].append(time.process_time() - started)
    return out


def summary(values: list[float], scale: float = 1.0) -> dict:
    return {"median": statistics.median(values) * scale, "min": min(values) * scale, "max": max(values) * scale}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--records", type=int, default=20000, help="documents from the head of the corpus")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--step", type=int, default=0, help="also time this many training steps per path")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    from env_record import environment

    from tuneforge.data.batching import collate

    with tempfile.TemporaryDirectory(prefix="data-access-") as work:
        run, cached, in_memory = build(Path(args.corpus), args.records, Path(work), args.model)
        cfg = run.cfg
        assert same_examples(cached, in_memory), "the cache and the in-memory path hold different examples"
        rng = random.Random(0)
        batches = [rng.sample(range(len(cached)), cfg.training.batch_size) for _ in range(args.batches)]
        pack = lambda examples: collate(examples, True, cfg.training.pack_length)  # noqa: E731 (the loop's)
        paths = {"in-memory": in_memory, "cache": cached}
        fetch = time_fetch(paths, batches, pack, args.reps)
        steps = time_steps(run, paths, batches, args.step, pack) if args.step else {}
    result = {
        "command": "python bench/bench_data_access.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "env": environment(), "load_1min": os.getloadavg()[0], "sequences": len(cached),
        "fetch_us_per_batch": {k: summary(v, 1e6) for k, v in fetch.items()},
        "step_cpu_s": {k: summary(v) for k, v in steps.items()},
        "raw": {"fetch_s_per_batch": fetch, "step_cpu_s": steps}}
    f = result["fetch_us_per_batch"]
    print(f"{len(cached):,} sequences, batches of {cfg.training.batch_size} x {cfg.training.max_length} tokens, "
          f"{args.batches} batches x {args.reps} reps, interleaved (CPU microseconds per batch: fetch + collate)")
    for name, s in f.items():
        print(f"  {name:10s} {s['median']:8.1f} us  ({s['min']:.1f}-{s['max']:.1f})")
    print(f"  cache / in-memory: {f['cache']['median'] / f['in-memory']['median']:.2f}x")
    for name, s in result["step_cpu_s"].items():
        share = f[name]["median"] / 1e6 / s["median"]
        print(f"  training step ({name}): {s['median']:.2f} CPU s ({s['min']:.2f}-{s['max']:.2f}); "
              f"fetch + collate = {100 * share:.3f}% of it")
    if steps:
        ratio = result["step_cpu_s"]["cache"]["median"] / result["step_cpu_s"]["in-memory"]["median"]
        print(f"  step CPU s, cache / in-memory: {ratio:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
