"""Where a LoRA SFT step's time goes, and which levers take it (issue 19 item 2). Loads the embedded default
through tuneforge's own skeleton (begin, load_data, open_output, load_base, apply_method), builds one fixed
list of micro-batches from the benchmark's real rows (bench/data, Self-Instruct's hand-written seed tasks,
alpaca-length), then either profiles steps with torch.profiler (--profile: the top ops by self CPU time) or
times the levers side by side (--levers): every repetition runs each lever once over the same batches, in
turn, so a burst of load hits them alike; the median and the min-max of the per-lever step time are printed
with each lever's ratio to `base`. Weights are restored between levers (AdamW with lr 0: the step's cost,
not its effect), so every lever sees the same model.

    python bench/profile_step.py --profile --batch 4 --steps 3 --threads 1 [--precision bf16] [--profile-lever L]
    python bench/profile_step.py --levers bf16,bf16-frozen,fp32 --batch 4,8 --reps 3 --steps 1 --threads 1
Levers: loop (the step as tuneforge's loop takes it by default), loop-sdpa, loop+no-dropout, base (the bare step
at what precision auto gives), bf16, fp32, bf16-frozen (+head), packed-attn,
bf16-frozen+packed-attn, fp32+packed-attn, packed-attn-sdpa (every sample through SDPA), no-dropout,
packed-attn+no-dropout, compile, fp32+compile (training.compile: torch.compile with
dynamic shapes), compile-padded, fp32+compile-padded (static graphs over rows padded to pack_length);
bench/speed_levers.py has the levers themselves. A compiled lever's first step (its compile) is reported apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sftbench.data import load_rows, split_rows  # noqa: E402


def setup(model: str, rows: int, tmp: str, dropout: float):
    import tuneforge.stages.skeleton as skeleton
    from tuneforge.config.schema import Config

    path = Path(tmp) / "train.jsonl"
    train, _ = split_rows(load_rows(), train_rows=rows)
    path.write_text("".join(json.dumps(s) + "\n" for s in train), encoding="utf-8")
    cfg = Config.model_validate({
        "model": model, "stage": "sft", "output_dir": f"{tmp}/run", "data": {"train": str(path)},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": dropout, "target_modules": ["q_proj", "v_proj"]},
        "training": {"batch_size": 4, "learning_rate": 1e-3, "epochs": 1, "max_length": 512, "progress": False}})
    run = skeleton.begin(cfg, lambda _m: None)
    data = skeleton.load_data(run)
    skeleton.open_output(run)
    model, _ = skeleton.apply_method(run, skeleton.load_base(run))
    return cfg, run, model, data.train


def make_steps(examples, batch: int, steps: int, pack_length: int) -> list[list]:
    """`steps` optimizer steps of one micro-batch of `batch` rows each, packed as the loop packs them."""
    from tuneforge.data.batching import collate

    return [collate(examples[s * batch:(s + 1) * batch], True, pack_length) for s in range(steps)]


def one_step(model, optimizer, batches, precision: str, loss_sum) -> tuple[float, int]:
    from tuneforge.train.precision import autocast

    n_sup = sum(b.n_supervised for b in batches)
    total = 0.0
    for b in batches:
        with autocast(precision):
            loss = loss_sum(model, b)
        (loss / n_sup).backward()
        total += float(loss.detach())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / n_sup, sum(b.n_tokens for b in batches)


def levers(model, precision: str, pack_length: int = 512, cfg=None) -> dict[str, tuple]:
    """name -> (context manager factory: the lever is on inside it, the model as it was after; precision).
    `base` is the bare step (`precision`: what training.precision auto resolved to here); `loop` is the step as
    tuneforge's loop takes it by default (frozen weights held in bf16, per-sample attention, chunked loss)."""
    from bench.loop_levers import both, loop, loop_compiled, no_dropout, short_path, with_training

    from bench import speed_levers as speed

    return {
        "loop": (lambda: loop(model, cfg, "bf16"), "bf16"),
        "loop-sdpa": (lambda: both(loop(model, cfg, "bf16"), short_path(0)), "bf16"),
        "loop+no-dropout": (lambda: both(loop(model, cfg, "bf16"), no_dropout(model)), "bf16"),
        # the loop's step (dropout off) through training.compile (dynamic shapes), and with training.bf16_stream
        "loop+compile": (lambda: loop_compiled(model, cfg), "bf16"),
        "loop+bf16-stream": (lambda: both(loop(model, with_training(cfg, bf16_stream=True), "bf16"), no_dropout(model)),
                             "bf16"),
        "base": (contextlib.nullcontext, precision),
        "bf16": (contextlib.nullcontext, "bf16"),
        "fp32": (contextlib.nullcontext, "fp32"),
        "bf16-frozen": (lambda: speed.frozen_in_bf16(model), "bf16"),
        "bf16-frozen+head": (lambda: speed.frozen_in_bf16(model, head=True), "bf16"),
        "packed-attn": (lambda: speed.packed_attention(model), precision),
        "bf16-frozen+packed-attn": (lambda: both(speed.frozen_in_bf16(model), speed.packed_attention(model)),
                                    "bf16"),
        "fp32+packed-attn": (lambda: speed.packed_attention(model), "fp32"),
        "no-dropout": (lambda: no_dropout(model), precision),
        # per-sample attention with SDPA for every sample (session 13's path, before the plain-ops path for short
        # bf16 samples), and per-sample attention without the LoRA dropout masks
        "packed-attn-sdpa": (lambda: both(speed.packed_attention(model), short_path(0)), precision),
        "packed-attn+no-dropout": (lambda: both(speed.packed_attention(model), no_dropout(model)), precision),
        # training.compile (dynamic shapes), and static graphs over rows padded to pack_length (what it was
        # measured against); the first step of each is its compile, reported apart (compare: first_step)
        "compile": (lambda: speed.compiled(model), precision),
        "fp32+compile": (lambda: speed.compiled(model), "fp32"),
        "compile-padded": (lambda: speed.compiled(model, padded_to=pack_length), precision),
        "fp32+compile-padded": (lambda: speed.compiled(model, padded_to=pack_length), "fp32"),
    }


def profile(model, optimizer, steps, precision, loss_sum, top: int) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    one_step(model, optimizer, steps[0], precision, loss_sum)  # warm-up (oneDNN kernels, allocator)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for batches in steps:
            one_step(model, optimizer, batches, precision, loss_sum)
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)
    return table + "\n" + matmul_share(averages)


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def matmul_share(averages) -> str:
    """One line: the matmul kernels' share of the profiled self CPU time, whatever the table's top rows are
    (on a tiny model other ops can fill them). Only the leaf kernels count (mm, addmm, bmm, baddbmm); matmul
    and linear are wrappers whose self time is dispatch."""
    total = sum(e.self_cpu_time_total for e in averages)
    leaves = [e for e in averages if e.key in MATMUL_OPS]
    mm = sum(e.self_cpu_time_total for e in leaves)
    names = ", ".join(sorted(e.key for e in leaves)) or "none"
    return f"matmul kernels ({names}): {mm / 1e3:.1f} ms of {total / 1e3:.1f} ms self CPU ({mm / max(total, 1):.0%})"


def compare(model, optimizer, steps, precision, loss_sum, names: list[str], reps: int, pack_length: int = 512,
            cfg=None) -> dict:
    """Per lever: CPU seconds (the process's user + system: what a step costs, much less moved by other
    processes than wall time on a shared machine) and wall seconds per step, over `reps` interleaved rounds
    after one warm-up step per lever. The warm-up step's own CPU seconds (this process and its children: g++
    for inductor) and wall seconds are kept as `first_step`: a compiled lever's compile time."""
    import torch

    table = levers(model, precision, pack_length, cfg)
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, float] = {}
    first: dict[str, dict] = {}
    tokens = sum(b.n_tokens for s in steps for b in s) / len(steps)
    for rep in range(reps + 1):  # rep 0: one warm-up step per lever, not kept
        for name in names:
            ctx, prec = table[name]
            with ctx() as lever:
                runner, fn = lever if isinstance(lever, tuple) else (model, loss_sum)  # compiled levers
                started, cpu0, kids0 = time.perf_counter(), time.process_time(), _children_cpu()
                step_losses = [one_step(runner, optimizer, b, prec, fn)[0] for b in (steps if rep else steps[:1])]
                elapsed, used = time.perf_counter() - started, time.process_time() - cpu0
            if not rep:
                first[name] = {"cpu_s": used + _children_cpu() - kids0, "wall_s": elapsed}
            with torch.no_grad():
                for n_, p in model.named_parameters():
                    if n_ in snapshot:
                        p.copy_(snapshot[n_])
            if rep:
                cpu[name].append(used / len(steps))
                wall[name].append(elapsed / len(steps))
                losses[name] = statistics.mean(step_losses)
    return {name: {"cpu_s": cpu[name], "wall_s": wall[name], "median_cpu_s": statistics.median(cpu[name]),
                   "min_cpu_s": min(cpu[name]), "max_cpu_s": max(cpu[name]),
                   "median_wall_s": statistics.median(wall[name]), "tokens_per_step": tokens,
                   "tok_per_cpu_s": tokens / statistics.median(cpu[name]), "loss": losses[name],
                   "first_step": first[name]} for name in names}


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", default="4", help="comma-separated micro-batch sizes")
    ap.add_argument("--steps", type=int, default=3, help="steps per measurement")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--precision", default="", help="the profile's precision (default: what auto resolves to)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--profile-lever", default="base", help="the lever on while --profile profiles (e.g. packed-attn)")
    ap.add_argument("--levers", default="base,bf16,fp32")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # inductor compiles in this process (and g++):
    import torch  # its CPU seconds are counted, and it keeps to one core

    torch.set_num_threads(args.threads)
    from tuneforge.train.loss import loss_sum

    result: dict = {"args": vars(args), "load_before": os.getloadavg(), "cpu": _cpu_model(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        batch_sizes = [int(b) for b in args.batch.split(",")]
        cfg, run, model, examples = setup(args.model, max(batch_sizes) * args.steps, tmp, args.dropout)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=0.0)
        for batch in batch_sizes:
            steps = make_steps(examples, batch, args.steps, cfg.training.pack_length)
            tok = sum(b.n_tokens for s in steps for b in s) / len(steps)
            precision = args.precision or run.precision
            head = f"batch {batch}: {tok:.0f} tokens per step, precision {precision}, threads {args.threads}"
            if args.profile:
                ctx, lever_precision = levers(model, precision, cfg.training.pack_length, cfg)[args.profile_lever]
                precision = args.precision or lever_precision
                print(head, "lever", args.profile_lever, "load", os.getloadavg())
                with ctx():
                    print(profile(model, optimizer, steps, precision, loss_sum, args.top))
                continue
            res = compare(model, optimizer, steps, precision, loss_sum, args.levers.split(","), args.reps,
                          cfg.training.pack_length, cfg)
            result["runs"][str(batch)] = res
            print(head)
            base = res[args.levers.split(",")[0]]["median_cpu_s"]
            for name, r in res.items():
                print(f"  {name:18s} {r['median_cpu_s']:.3f} CPU s/step ({r['min_cpu_s']:.3f}-{r['max_cpu_s']:.3f}), "
                      f"wall {r['median_wall_s']:.2f} s, {r['tok_per_cpu_s']:.0f} tok per CPU s, "
                      f"speed x{base / r['median_cpu_s']:.2f}, loss {r['loss']:.5f}, first step "
                      f"{r['first_step']['cpu_s']:.1f} CPU s / {r['first_step']['wall_s']:.1f} s wall")
    result["load_after"] = os.getloadavg()
    print("load", result["load_before"], "->", result["load_after"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


if __name__ == "__main__":
    raise SystemExit(main())
