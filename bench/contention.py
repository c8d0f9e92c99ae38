"""What a busy core beside a run costs it, and what fewer threads give back (the warning of
tuneforge/train/contention.py). Each case runs in its own process: LoRA SFT steps of the embedded default on the
benchmark's real rows (bench/data, as bench/profile_step.py builds them), with T torch threads, on an idle machine
or beside a process that keeps one core busy (a Python busy loop). Repetitions interleave the cases; the median and
min-max wall seconds per step, and the ratios, are printed and written as JSON with the environment.

    python bench/contention.py --reps 3 --steps 4 --out bench/results/contention.json
    python bench/contention.py --model <dir> --reps 1 --steps 1 --batch 1   # quick (the test's)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUSY_LOOP = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"
CASES = (("idle", 2), ("busy", 2), ("busy", 1))  # (the machine beside the run, the run's threads)


def child(model: str, threads: int, steps: int, batch: int) -> dict:
    """Run `steps` timed LoRA steps (after one untimed warm-up step) with `threads` threads: wall s per step."""
    import torch

    torch.set_num_threads(threads)
    from bench.profile_step import make_steps, one_step, setup

    from tuneforge.train.loss import loss_sum

    with tempfile.TemporaryDirectory() as tmp:
        cfg, run, net, examples = setup(model, batch * (steps + 1), tmp, 0.0)
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.0)
        batches = make_steps(examples, batch, steps + 1, cfg.training.pack_length)
        one_step(net, optimizer, batches[0], run.precision, loss_sum)  # kernels warmed, caches filled
        seconds, tokens = [], 0
        for step in batches[1:]:
            started = time.perf_counter()
            tokens += one_step(net, optimizer, step, run.precision, loss_sum)[1]
            seconds.append(time.perf_counter() - started)
    return {"threads": threads, "precision": run.precision, "step_s": seconds, "tokens_per_step": tokens / steps}


def run_case(model: str, beside: str, threads: int, steps: int, batch: int) -> dict:
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if beside == "busy" else None
    try:
        out = subprocess.run([sys.executable, __file__, "--child", "--model", model, "--threads", str(threads),
                              "--steps", str(steps), "--batch", str(batch)], capture_output=True, text=True,
                             check=True, env={"OMP_NUM_THREADS": str(threads), **_env()})
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model, args.threads, args.steps, args.batch)))
        return {}
    runs: dict[str, list[float]] = {f"{b}/{t}": [] for b, t in CASES}
    for rep in range(args.reps):
        for beside, threads in CASES:
            r = run_case(args.model, beside, threads, args.steps, args.batch)
            step = statistics.median(r["step_s"])
            runs[f"{beside}/{threads}"].append(step)
            print(f"rep {rep + 1}: {beside:4s} machine, {threads} thread(s): {step:.2f} s/step "
                  f"({r['tokens_per_step']:.0f} tokens, {r['precision']})", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    report = {"command": "python bench/contention.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cases": {k: {"median_s": med[k], "min_s": min(v), "max_s": max(v), "reps": v} for k, v in runs.items()},
              "busy2_over_idle2": med["busy/2"] / med["idle/2"], "busy2_over_busy1": med["busy/2"] / med["busy/1"]}
    for k, c in report["cases"].items():
        print(f"{k:7s} median {c['median_s']:.2f} s/step ({c['min_s']:.2f}-{c['max_s']:.2f})")
    print(f"beside a busy core, 2 threads take {report['busy2_over_idle2']:.2f}x the idle machine's time a step and "
          f"{report['busy2_over_busy1']:.2f}x what 1 thread takes there")
    from bench.env_record import with_environment

    return with_environment(report, args.out or None)


if __name__ == "__main__":
    main()
