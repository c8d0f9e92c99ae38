"""`run_plan(argv)`: the `tuneforge plan` command. Parses its own arguments, prints a rich table (or
JSON with --json) of parameters and memory per method, and returns the exit code.

    python -c "import sys; from tuneforge.plan import run_plan; sys.exit(run_plan(['--model', 'llama-2-7b', '--method', 'lora']))"
"""

from __future__ import annotations

import argparse
import json
import warnings

import psutil

from tuneforge.errors import UserError
from tuneforge.plan.archs import load_arch_config
from tuneforge.plan.estimate import METHODS, estimate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneforge plan", description=(
        "Estimate trainable parameters and training memory per fine-tuning method from a model config "
        "(no weights are loaded). Memory: weights, gradients, AdamW states, activations; GiB."))
    p.add_argument("--model", required=True, help="shipped architecture (e.g. llama-2-7b, smollm2-135m, "
                   "distilbert) or a local directory with config.json")
    p.add_argument("--method", default="all", help=f"one or more of {','.join(METHODS)} (comma-separated), or all")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per sample (default: training.max_length)")
    p.add_argument("--budget-gb", type=float, default=None, help="memory budget in GiB (default: this machine's RAM)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "bf16-mixed", "bf16-master"],
                   help="auto/bf16 = tuneforge's bf16 autocast over fp32 weights; bf16-master = bf16 weights "
                   "and grads with an fp32 master copy")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--supervised-fraction", type=float, default=1.0,
                   help="share of positions that get logits (tuneforge computes them for supervised tokens only)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--target-modules", nargs="+", default=None,
                   help="LoRA/DoRA/QLoRA/IA3 targets (space- or comma-separated) or all-linear; default: peft's")
    p.add_argument("--freeze-last-n", type=int, default=2, help="freeze: train the last N blocks")
    p.add_argument("--adapter-size", type=int, default=64, help="adapter: bottleneck width")
    p.add_argument("--num-virtual-tokens", type=int, default=20, help="prefix/prompt: virtual tokens")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _targets(values: list[str] | None) -> list[str] | str | None:
    if not values:
        return None
    names = [n for v in values for n in v.split(",") if n]
    return "all-linear" if names == ["all-linear"] else names


def _methods(text: str) -> list[str]:
    names = list(METHODS) if text == "all" else [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise UserError(f"--method: unknown {', '.join(unknown)}; known: {', '.join(METHODS)} or all")
    return names


def _precision(name: str) -> str:
    if name != "auto":
        return name
    from tuneforge.train.precision import cpu_has_bf16

    return "bf16-mixed" if cpu_has_bf16() else "fp32"  # what `precision: auto` trains with here


def _estimates(args: argparse.Namespace) -> list[dict]:
    config = load_arch_config(args.model)
    budget = args.budget_gb if args.budget_gb is not None else psutil.virtual_memory().total / 2**30
    names = _methods(args.method)
    params = dict(batch_size=args.batch_size, seq_len=args.seq_len, precision=_precision(args.precision),
                  budget_gb=budget, r=args.lora_r, lora_dropout=args.lora_dropout,
                  target_modules=_targets(args.target_modules), freeze_last_n=args.freeze_last_n,
                  adapter_size=args.adapter_size, num_virtual_tokens=args.num_virtual_tokens,
                  gradient_checkpointing=args.gradient_checkpointing, attention=args.attention,
                  supervised_fraction=args.supervised_fraction)
    rows = []
    for method in names:
        try:
            rows.append(estimate(config, method, **params))
        except UserError as exc:
            if len(names) == 1:  # asked for this one method: an error; in a table of all, a row saying why
                raise
            rows.append({"method": method, "error": str(exc)})
    return rows


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    first = next(r for r in rows if "error" not in r)
    s = first["settings"]
    title = (f"{first['model']} ({first['base_params']:,} params), batch {s['batch_size']} x seq {s['seq_len']}, "
             f"{s['precision']}{', grad checkpointing' if s['gradient_checkpointing'] else ''}, AdamW")
    caption = (f"GiB. fits: total <= {first['budget_gib']:.1f} GiB budget. "
               "optimizer: AdamW m, v (+ fp32 master under bf16-master)")
    table = Table(title=title, caption=caption)
    for col in ("method", "trainable", "%", "weights", "grads", "optimizer", "activations", "total GiB", "fits?"):
        table.add_column(col, justify="left" if col == "method" else "right")
    notes = []
    for r in rows:
        if "error" in r:
            table.add_row(r["method"], "n/a", "", "", "", "", "", "", "n/a")
            notes.append(f"{r['method']}: {r['error']}")
            continue
        g = r["gib"]
        table.add_row(r["method"], f"{r['trainable_params']:,}", f"{r['trainable_pct']:.4f}", f"{g['weights']:.2f}",
                      f"{g['gradients']:.2f}", f"{g['optimizer'] + g['master_weights']:.2f}",
                      f"{g['activations']:.2f}", f"{g['total']:.2f}", "yes" if r["fits"] else "NO")
    console = Console(width=max(120, Console().width))  # a pipe defaults to 80 columns: too narrow for 9
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)


def run_plan(argv: list[str]) -> int:
    """Parse `argv` (the arguments after `plan`), print the estimates, return 0. UserError -> exit 2 upstream."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft/transformers deprecation chatter on meta models
        rows = _estimates(args)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif all("error" in r for r in rows):
        raise UserError("; ".join(r["error"] for r in rows))
    else:
        _print_table(rows)
    return 0
