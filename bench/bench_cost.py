"""Cost as work grows (issue 19 item 4): real tokens/s and peak RSS of `tuneforge train` (SFT) against model size
and rows per micro-batch, each beside `tuneforge plan`'s memory estimate for the same config.

Models: the embedded SmolLM2-135M-Instruct (real weights) and random-initialised SmolLM2-360M and SmolLM2-1.7B
shapes from tuneforge's shipped plan configs (src/tuneforge/plan/archs/), with the 135M's tokenizer (the same
family's). Speed and memory do not depend on the weights' values. Data: the benchmark's human-written
Self-Instruct rows (bench/data, alpaca-length). Each cell is one fresh `tuneforge train` process (the user's own
command) for a few steps; tokens/s is the steady rate over the steps after the first (the first pays oneDNN
warm-up), from the run's train_log.jsonl; peak RSS is the process's (metrics.json). A cell that `tuneforge plan`
says does not fit this machine's memory is not run: the table says so.

    python bench/bench_cost.py                                   # the default grid (~20 min on 2 idle cores)
    python bench/bench_cost.py --cells smollm2-135m-instruct:lora:4 --steps 4
    python bench/bench_cost.py --quick --model-dir TINY_DIR      # CI (tests/bench/test_bench_cost.py)

Writes bench/results/cost.json (every cell's raw figures, the plan's, versions, commit, CPU flags, load average)
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from env_record import environment, load_average  # noqa: E402

# model:method:batch. Full fine-tuning of 1.7B needs ~16 bytes a parameter before activations: plan refuses it here.
DEFAULT_CELLS = [
    "smollm2-135m-instruct:lora:1", "smollm2-135m-instruct:lora:4", "smollm2-135m-instruct:lora:8",
    "smollm2-135m-instruct:full:4",
    "random:smollm2-360m:lora:1", "random:smollm2-360m:lora:4", "random:smollm2-360m:lora:8",
    "random:smollm2-360m:full:4",
    "random:smollm2-1.7b:lora:1", "random:smollm2-1.7b:lora:4", "random:smollm2-1.7b:full:4",
]
MAX_LENGTH = 512


def parse_cell(text: str) -> tuple[str, str, int]:
    """'MODEL:METHOD:BATCH' -> (model, method, batch); MODEL may be 'random:ARCH' (ARCH: a shipped plan
    name, or a directory holding a config.json)."""
    *model, method, batch = text.split(":")
    if not model or method not in ("lora", "full", "qlora") or not batch.isdigit():
        raise SystemExit(f"--cells: {text!r}: expected MODEL:METHOD:BATCH, METHOD lora|full|qlora")
    return ":".join(model), method, int(batch)


def model_dir(model: str, home: Path, tokenizer_from: str) -> Path:
    """A directory `tuneforge train` can load: an alias or directory as is; 'random:ARCH' built once (seeded
    random weights of the shipped shape, fp32 safetensors) under $TUNEFORGE_HOME/bench-models/."""
    from tuneforge.models.load import resolve_model

    if not model.startswith("random:"):
        return Path(resolve_model(model))
    arch = model.split(":", 1)[1]
    dest = home / "bench-models" / f"{Path(arch).name}-random"  # ARCH: a shipped name or a directory
    if (dest / "config.json").is_file():
        return dest
    print(f"building random-initialised {arch} in {dest} (once)", flush=True)
    code = ("import sys, torch; from pathlib import Path\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "from tuneforge.plan.archs import load_arch_config\n"
            "from tuneforge.models.load import resolve_model\n"
            "torch.manual_seed(0); dest = Path(sys.argv[2]); tmp = dest.with_name(dest.name + '.tmp')\n"
            "cfg = load_arch_config(sys.argv[1]); cfg.dtype = 'float32'\n"
            "AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(tmp)\n"
            "AutoTokenizer.from_pretrained(resolve_model(sys.argv[3])).save_pretrained(tmp)\n"
            "tmp.replace(dest)\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, arch, str(dest), tokenizer_from], check=True)
    return dest


def write_data(path: Path, rows: int) -> dict:
    from sftbench.data import load_rows, split_rows

    train, _ = split_rows(load_rows())
    train = train[: rows or None]
    path.write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    return {"file": "bench/data/self_instruct_seed_tasks.jsonl (Self-Instruct seed tasks, train split)",
            "rows": len(train)}


def plan_estimate(model: Path, method: str, batch: int, seq_len: int, precision: str) -> dict:
    """`tuneforge plan --json` for the cell, at the config's max_length and at the tokens a row really had."""
    cmd = [sys.executable, "-m", "tuneforge", "plan", "--json", "--precision", precision, f"model={model}",
           f"method.name={method}", f"training.batch_size={batch}", f"training.max_length={seq_len}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    row = json.loads(proc.stdout)[0]
    return {"seq_len": seq_len, "total_gib": row["gib"]["total"], "gib": row["gib"], "fits": row["fits"],
            "budget_gib": row["budget_gib"], "total_params": row["total_params"],
            "trainable_params": row["trainable_params"]}


def run_cell(model: Path, method: str, batch: int, steps: int, data: Path, work: Path, threads: int) -> dict:
    """One `tuneforge train` process: its steady tokens/s, first-step seconds, peak RSS, wall and resolved settings."""
    out = work / "run"
    cfg = {"model": str(model), "stage": "sft", "method": {"name": method}, "data": {"train": str(data)},
           "training": {"batch_size": batch, "max_steps": steps, "max_length": MAX_LENGTH, "save_steps": 10**6,
                        "learning_rate": 1e-4 if method == "full" else 2e-3},
           "eval": {"before": False, "generate_samples": 0}, "output_dir": str(out), "seed": 0}
    cfg_path = work / "cfg.json"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    load = load_average()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuneforge", "train", str(cfg_path)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.returncode, "tail": (proc.stdout + proc.stderr)[-3000:], "load_before": load}
    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["train"]
    steps_log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    later = steps_log[1:] or steps_log
    return {
        "steps": len(steps_log),
        "tokens_per_second": sum(s["tokens"] for s in later) / sum(s["seconds"] for s in later),
        "tokens_per_step": sum(s["tokens"] for s in steps_log) / len(steps_log),
        "first_step_s": steps_log[0]["seconds"], "step_s": [s["seconds"] for s in steps_log],
        "peak_rss_mb": train["peak_rss_mb"], "precision": train["precision"], "process_wall_s": wall,
        "total_params": train["total_params"], "trainable_params": train["trainable_params"],
        "losses": [s["loss"] for s in steps_log], "load_before": load, "load_after": load_average(),
    }


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def table(cells: list[dict]) -> str:
    lines = ["| model | params | method | rows/micro-batch | real tokens/step | tokens/s | first step s | "
             "peak RSS GiB | plan GiB (rows as fed) | plan GiB (max_length 512) | RSS - plan (as fed) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        head = f"| {c['label']} | {_fmt_params(c['plan_max']['total_params'])} | {c['method']} | {c['batch']} |"
        r = c.get("run")
        if r is None:
            lines.append(f"{head} not run: plan says {c['plan_max']['total_gib']:.1f} GiB > "
                         f"{c['plan_max']['budget_gib']:.1f} GiB here | | | | | {c['plan_max']['total_gib']:.2f} | |")
            continue
        if "error" in r:
            lines.append(f"{head} failed (exit {r['error']}) | | | | | | |")
            continue
        rss = r["peak_rss_mb"] / 1024
        lines.append(f"{head} {r['tokens_per_step']:.0f} | {r['tokens_per_second']:.0f} | {r['first_step_s']:.1f} | "
                     f"{rss:.2f} | {c['plan_fed']['total_gib']:.2f} | {c['plan_max']['total_gib']:.2f} | "
                     f"{rss - c['plan_fed']['total_gib']:+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", help="comma list of MODEL:METHOD:BATCH (default: the grid above)")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per cell (the first is not timed)")
    p.add_argument("--big-steps", type=int, default=3, help="steps for models over 1B parameters")
    p.add_argument("--rows", type=int, default=0, help="first N train rows (0: all 140)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per cell (0: the usable CPUs)")
    p.add_argument("--tokenizer-from", default="smollm2-135m-instruct", help="tokenizer of the random models")
    p.add_argument("--quick", action="store_true", help="CI: the cells given, 2 steps, 8 rows")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "cost.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.big_steps, args.rows = 2, 2, 8
    threads = args.threads or len(os.sched_getaffinity(0))
    from tuneforge.models.hub import tuneforge_home

    home = tuneforge_home()
    record: dict = {"command": [Path(sys.executable).name, *sys.argv[1:]] if argv is None else ["bench_cost.py", *argv],
                    "args": vars(args), "env": environment(), "threads": threads, "cells": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        data = Path(tmp) / "train.jsonl"
        record["data"] = write_data(data, args.rows)
        for text in (args.cells.split(",") if args.cells else DEFAULT_CELLS):
            model, method, batch = parse_cell(text)
            path = model_dir(model, home, args.tokenizer_from)
            precision = _plan_precision(_resolved_precision())
            cell: dict = {"cell": text, "label": model.removeprefix("random:") + (" (random)" if
                          model.startswith("random:") else ""), "method": method, "batch": batch,
                          "plan_max": plan_estimate(path, method, batch, MAX_LENGTH, precision)}
            if not cell["plan_max"]["fits"]:
                print(f"{text}: not run, plan says {cell['plan_max']['total_gib']:.1f} GiB", flush=True)
            else:
                big = cell["plan_max"]["total_params"] > 1e9
                work = Path(tempfile.mkdtemp(prefix="cell-", dir=tmp))
                cell["run"] = run_cell(path, method, batch, args.big_steps if big else args.steps, data, work,
                                       threads)
                r = cell["run"]
                if "error" not in r:
                    fed = max(1, round(r["tokens_per_step"] / batch))
                    cell["plan_fed"] = plan_estimate(path, method, batch, fed, _plan_precision(r["precision"]))
                    print(f"{text}: {r['tokens_per_second']:.0f} tokens/s, peak RSS {r['peak_rss_mb'] / 1024:.2f} GiB"
                          f" (plan as fed {cell['plan_fed']['total_gib']:.2f}), {r['process_wall_s']:.0f} s",
                          flush=True)
                else:
                    print(f"{text}: FAILED\n{r['tail']}", flush=True)
            record["cells"].append(cell)
            out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")  # a stopped run keeps its cells
    record["table"] = table(record["cells"])
    record["load_average_end"] = load_average()
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print("\n" + record["table"])
    print(f"\nCPU: {record['env']['cpu']['model']}, {threads} threads; wrote {out}")
    return 1 if any("error" in c.get("run", {}) for c in record["cells"]) else 0


def _plan_precision(resolved: str) -> str:
    return "bf16" if resolved.startswith("bf16") else "fp32"


def _resolved_precision() -> str:
    """What precision auto resolves to on this machine (the plan's first estimate uses it)."""
    from tuneforge.train.precision import resolve_precision

    return resolve_precision("auto")


if __name__ == "__main__":
    sys.exit(main())
