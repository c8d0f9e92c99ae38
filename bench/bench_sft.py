"""One epoch of LoRA SFT on real instruction rows, five recipes side by side, each repetition in a fresh process:
  seed-fp32    transformers.Trainer + peft, padding="max_length", fp32 (the seeds' recipe)
  seed-bf16    the same in bf16 autocast
  trl-default  trl.SFTTrainer with its defaults
  trl-cpu      trl.SFTTrainer tuned for CPU: bf16, no gradient checkpointing, bfd packing (padding-free)
  tuneforge    tuneforge's own data path, LoRA and loop, its defaults
Same rows (bench/data: Self-Instruct's 175 human-written seed tasks; 140 train, 35 eval), LoRA (r=8, alpha 16,
dropout 0.05, q_proj/v_proj), batch, learning rate, max_length 512, one epoch. Recipes are interleaved
(a b c d e, a b c d e, ...) so that noise hits all alike; the table gives median (min-max) over repetitions.
The bf16 and fp32 matmul peaks are measured in the same run (before and after); MFU = 4 N real tok/s / peak.
Every repetition's raw figures, all settings, versions, commit and CPU flags go to the JSON.

    python bench/bench_sft.py                         # `make bench`: 3 repetitions x 5 recipes, ~75 min on 2 idle cores
    python bench/bench_sft.py --reps 5 --recipes seed-fp32,tuneforge
    python bench/bench_sft.py --recipes tuneforge,tuneforge-trim --out /tmp/trim.json   # one lever
    python bench/bench_sft.py --quick --out /tmp/q.json   # CI: 2 recipes, 1 repetition, 2 steps, 8 rows
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # a child's import time counts from here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402
from env_record import environment, load_average, matmul_peak  # noqa: E402
from sftbench.recipes import DESCRIPTIONS, PEERS, RECIPES, Common  # noqa: E402
from sftbench.report import summarise, table  # noqa: E402

LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
QUICK = {"recipes": "seed-fp32,tuneforge", "reps": 1, "max_steps": 2, "train_rows": 8, "eval_rows": 4,
         "peak_seconds": 0.2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias or HF directory (tests: the tiny one)")
    p.add_argument("--recipes", default=",".join(PEERS), help=f"comma list of {', '.join(RECIPES)}")
    p.add_argument("--reps", type=int, default=3, help="repetitions per recipe (interleaved)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="one learning rate for every recipe")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--max-steps", type=int, default=0, help="cap every recipe at this many steps (0: one epoch)")
    p.add_argument("--train-rows", type=int, default=0, help="first N of the 140 train rows (0: all)")
    p.add_argument("--eval-rows", type=int, default=0, help="first N of the 35 eval rows (0: all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in every process (0: the usable CPUs)")
    p.add_argument("--peak-seconds", type=float, default=2.0, help="per matmul peak measurement")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quick", action="store_true", help="CI: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--out", default="bench/results/sft.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if not args.threads:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    unknown = set(args.recipes.split(",")) - set(RECIPES)
    if unknown:
        p.error(f"unknown recipes {sorted(unknown)}; known: {', '.join(RECIPES)}")
    return args


def common(args: argparse.Namespace) -> Common:
    return Common(model=args.model, batch=args.batch, lr=args.lr, max_len=args.max_len, max_steps=args.max_steps,
                  seed=args.seed, lora=LORA)


def peaks(args: argparse.Namespace, hidden: int, inter: int) -> list[dict]:
    """fp32 and bf16 matmul rates on a square 2048 GEMM and on the model's own MLP shape (max_len x hidden x
    intermediate); the run's peak per dtype is the best of all these measurements."""
    out = []
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for shape in ((2048, 2048, 2048), (args.max_len, hidden, inter)):
            flops = matmul_peak(dtype, shape, seconds=args.peak_seconds, window=min(0.25, args.peak_seconds / 4))
            out.append({"dtype": name, "shape": list(shape), "flops": flops, "time": time.time()})
    return out


def data_record(args: argparse.Namespace) -> dict:
    from sftbench.data import DATA, data_stats, load_rows, split_rows
    from transformers import AutoConfig, AutoTokenizer

    from tuneforge.models.load import resolve_model

    path = resolve_model(args.model)
    tok, cfg = AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path)
    train, evals = split_rows(load_rows(), args.train_rows, args.eval_rows)
    return {"file": str(DATA.relative_to(DATA.parent.parent.parent)), "source": "bench/data/README.md",
            "train": data_stats(tok, train, args.max_len), "eval": data_stats(tok, evals, args.max_len),
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size}


def run_rep(args: argparse.Namespace, recipe: str, rep: int) -> dict:
    probe = matmul_peak(torch.float32, seconds=min(0.5, args.peak_seconds), window=0.1)  # how busy the cores are now
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--child", recipe, "--child-out", f.name, "--model", args.model,
               "--batch", str(args.batch), "--lr", str(args.lr), "--max-len", str(args.max_len),
               "--max-steps", str(args.max_steps), "--train-rows", str(args.train_rows),
               "--eval-rows", str(args.eval_rows), "--threads", str(args.threads), "--seed", str(args.seed)]
        print(f"== rep {rep + 1}/{args.reps} {recipe}: {DESCRIPTIONS[recipe]}", flush=True)
        load = load_average()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd)
        wall = time.perf_counter() - t0
        result = json.loads(Path(f.name).read_text()) if proc.returncode == 0 else {"error": proc.returncode}
    return {**result, "rep": rep, "process_wall_s": wall, "probe_fp32_gflops": probe / 1e9, "load_before": load}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        from sftbench.child import run_child

        run_child(args.child, common(args), args.train_rows, args.eval_rows, Path(args.child_out), T_START)
        return 0
    env_start = environment()
    data = data_record(args)
    measured = peaks(args, data["hidden_size"], data["intermediate_size"])
    names = args.recipes.split(",")
    raw: dict[str, list[dict]] = {n: [] for n in names}
    partial = Path(args.out).with_suffix(".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    for rep in range(args.reps):
        for name in names:  # interleaved: a b c d e, a b c d e, ...
            raw[name].append(run_rep(args, name, rep))
            # after every repetition: a run stopped early keeps what it measured (the final JSON replaces it)
            partial.write_text(json.dumps({"args": vars(args), "env": env_start, "data": data,
                                           "peak_measurements": measured, "raw": raw}, indent=2) + "\n")
    measured += peaks(args, data["hidden_size"], data["intermediate_size"])
    peak = {d: max(m["flops"] for m in measured if m["dtype"] == d) for d in ("fp32", "bf16")}
    summary = summarise(raw, peak)
    settings = {n: next((r["settings"] for r in reps if "settings" in r), {}) for n, reps in raw.items()}
    text = table(summary, settings)
    print(f"\ndata: train {data['train']}\n      eval {data['eval']}")
    print(f"matmul peak ({args.threads} threads): fp32 {peak['fp32'] / 1e9:.1f}, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s")
    for n, s in settings.items():
        print(f"settings {n}: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    print("\n" + text)
    if args.quick or args.max_steps or args.train_rows:
        print("note: not the full configuration (quick / capped steps / fewer rows): figures are not comparable")
    record = {"command": [Path(sys.executable).name, *sys.argv], "args": vars(args), "common": vars(common(args)),
              "descriptions": {n: DESCRIPTIONS[n] for n in names}, "data": data, "env": env_start,
              "load_average_end": load_average(), "peak_flops": peak, "peak_measurements": measured,
              "raw": raw, "summary": summary, "table": text}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    partial.unlink(missing_ok=True)
    print(f"wrote {out}")
    failed = [f"{n} rep {r['rep'] + 1}" for n, reps in raw.items() for r in reps if "error" in r]
    if failed:
        print(f"FAILED: {', '.join(failed)} (see their output above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
