"""`run_plan(argv)`: the `tuneforge plan` command. Takes the config's own keys: a config file and/or dotted
overrides (`model=llama-3-8b method.name=qlora method.r=16 training.batch_size=4 training.max_length=2048`),
prints a rich table (or JSON with --json) of parameters and memory per method, and returns the exit code.
Without a config file and without method.name, every method is listed (method.name=all does the same).

    run_plan(["model=llama-2-7b", "method.name=lora", "training.batch_size=1"])   # -> 0, prints the table
"""

from __future__ import annotations

import argparse
import difflib
import json
import warnings

import psutil
from pydantic import ValidationError

from tuneforge.config.load import apply_overrides, load_config
from tuneforge.config.schema import METHOD_CONFIGS, Config, TrainingConfig
from tuneforge.errors import ConfigError, UserError
from tuneforge.methods import METHODS, check_compat
from tuneforge.plan.archs import is_causal_lm, load_arch_config
from tuneforge.plan.estimate import estimate
from tuneforge.stage_info import stage_info
from tuneforge.train.chunked_loss import chunked_loss_applies


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneforge plan", description=(
        "Estimate trainable parameters and training memory per fine-tuning method from a model config "
        "(no weights are loaded). Memory: weights, gradients, AdamW states, activations; GiB. Give a tuneforge "
        "config file and/or its keys as dotted overrides: model=..., method.name=lora (or lora,qlora or all), "
        "method.r=16, method.target_modules=all-linear, training.batch_size=4, training.max_length=2048, "
        "training.precision=bf16, training.gradient_checkpointing=true, stage=classify."))
    p.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value",
                   help="a config file and/or dotted.key=value overrides")
    p.add_argument("--budget-gb", type=float, default=None, help="memory budget in GiB (default: this machine's RAM)")
    p.add_argument("--precision", choices=["fp32", "bf16", "bf16-mixed", "bf16-master"],
                   help="overrides training.precision; bf16 = tuneforge's bf16 autocast over fp32 weights, "
                   "bf16-master = bf16 weights and grads with an fp32 master copy (not a training option)")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--supervised-fraction", type=float, default=1.0,
                   help="share of positions that get logits (tuneforge computes them for supervised tokens only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--gpus", type=int, help="GPUs per machine to plan the launch for (default: this machine's)")
    p.add_argument("--gpu-gb", type=float, help="memory per GPU in GiB (default: this machine's smallest GPU)")
    p.add_argument("--nodes", type=int, default=1, help="machines (default 1)")
    p.add_argument("--launch-files", metavar="DIR", help="training.distributed=deepspeed: write the accelerate + "
                   "DeepSpeed files to launch with into DIR")
    return p


def _explain(exc: ValidationError, prefix: str) -> str:
    return "; ".join(f"key '{prefix}{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors())


def plan_settings(items: list[str]) -> tuple[dict, list[str]]:
    """(settings, method names) from a config file and/or overrides; only the keys plan uses must be valid."""
    files = [i for i in items if "=" not in i]
    if len(files) > 1:
        raise ConfigError(f"plan takes one config file, got {', '.join(files)}")
    overrides = [i for i in items if "=" in i]
    names = next((o.partition("=")[2] for o in overrides if o.partition("=")[0].strip() == "method.name"), None)
    several = names is not None and ("," in names or names == "all")
    if several:  # a list of methods is plan's own: each row validates as its own method
        overrides = [o for o in overrides if o.partition("=")[0].strip() != "method.name"]
    if files:
        cfg = load_config(files[0], overrides)
        raw_method = {k: v for k, v in cfg.method.model_dump().items() if k != "name"}
        settings = {"model": cfg.model, "stage": cfg.stage, "method": raw_method, "training": cfg.training}
        return settings, (_names(names) if several else [cfg.method.name])
    raw = apply_overrides({}, overrides)
    for key in raw:
        if key not in Config.model_fields:
            guess = difflib.get_close_matches(key, list(Config.model_fields), n=1)
            raise ConfigError(f"unknown key {key!r}" + (f"; did you mean {guess[0]!r}?" if guess else ""))
    if "model" not in raw:
        raise ConfigError("missing key 'model': give a config file or model=NAME (a shipped architecture such as "
                          "llama-3-8b, smollm2-135m-instruct, minilm-l6, or a directory with config.json)")
    method = raw.get("method") or {}
    if not isinstance(method, dict):
        raise ConfigError("key 'method': expected keys such as method.name=lora method.r=8")
    try:
        training = TrainingConfig.model_validate(raw.get("training") or {})
    except ValidationError as exc:
        raise ConfigError(_explain(exc, "training.")) from None
    stage = raw.get("stage")
    if stage is not None:
        stage_info(str(stage))  # a ConfigError naming the known stages
    return {"model": str(raw["model"]), "stage": stage, "training": training,
            "method": {k: v for k, v in method.items() if k != "name"}}, _names(names)


def _names(text: str | None) -> list[str]:
    if text is None or text == "all":
        return list(METHODS)
    names = [m.strip() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ConfigError(f"key 'method.name': unknown {', '.join(unknown)}; known: {', '.join(METHODS)} or all")
    return names


def _precision(name: str) -> str:
    if name != "auto":
        return name
    from tuneforge.train.precision import cpu_has_bf16

    return "bf16-mixed" if cpu_has_bf16() else "fp32"  # what `precision: auto` trains with here


def _estimates(args: argparse.Namespace) -> list[dict]:
    settings, names = plan_settings(args.items)
    config = load_arch_config(settings["model"])
    training, options = settings["training"], settings["method"]
    # no stage given: what the architecture is for (a decoder: sft; an encoder: classify)
    stage = settings["stage"] or ("sft" if is_causal_lm(config) else "classify")
    budget = args.budget_gb if args.budget_gb is not None else psutil.virtual_memory().total / 2**30
    common = dict(batch_size=training.batch_size, seq_len=training.max_length, budget_gb=budget,
                  precision=_precision(args.precision or training.precision),
                  gradient_checkpointing=training.gradient_checkpointing, frozen_bf16=training.frozen_bf16,
                  bf16_stream=training.bf16_stream,
                  chunked_loss=chunked_loss_applies(training),
                  attention=args.attention,
                  supervised_fraction=args.supervised_fraction,
                  classifier=stage_info(stage).has_labels)
    rows = []
    for name in names:
        # one method: every option given must be its own; in a table a method takes the options when it has
        # every one of them (r and alpha: lora and qlora; num_virtual_tokens: prefix and prompt), else its defaults
        fits = len(names) == 1 or set(options) <= set(METHOD_CONFIGS[name].model_fields)
        params = options if fits else {}
        try:
            check_compat(name, stage)
            rows.append(estimate(config, name, **common, **params))
        except UserError as exc:
            if len(names) == 1:  # asked for this one method: an error; in a table of all, a row saying why
                raise
            rows.append({"method": name, "error": str(exc)})
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


def plan_launch(args: argparse.Namespace, rows: list[dict]) -> list[str]:
    """Each row's launcher and sharding (row['launch'], tuneforge.plan.launch) for --gpus / --gpu-gb / --nodes or
    this machine; with --launch-files, the DeepSpeed launch files. Returns the lines to print."""
    from pathlib import Path

    from tuneforge.plan.launch import choose, hardware, launch_lines
    from tuneforge.train.zero import check_deepspeed, write_launch_files

    settings, names = plan_settings(args.items)
    training = settings["training"]
    hw = hardware() | {"nodes": args.nodes}
    if args.gpus is not None:
        if args.gpus > 0 and args.gpu_gb is None and hw["gpus"] == 0:
            raise ConfigError("--gpus: give --gpu-gb too (this machine has no GPU to read the memory from)")
        hw |= {"gpus": args.gpus, "gpu_gib": args.gpu_gb if args.gpu_gb is not None else hw["gpu_gib"]}
    elif args.gpu_gb is not None:
        hw["gpu_gib"] = args.gpu_gb
    zero = training.deepspeed.zero_stage if training.deepspeed else 2
    for row in rows:
        if "error" not in row:
            row["launch"] = choose(row, training.distributed, hw["gpus"], hw["gpu_gib"], args.nodes, zero)
    lines = launch_lines(rows, hw)
    if args.launch_files:
        if training.distributed != "deepspeed":
            raise ConfigError("--launch-files writes DeepSpeed files: set training.distributed=deepspeed")
        for name in names:
            check_deepspeed(training, settings["stage"] or "sft", name)
        files = write_launch_files(training, Path(args.launch_files), max(hw["gpus"], 1) * args.nodes, args.nodes)
        lines.append(f"wrote {', '.join(map(str, files))}")
    return lines


def run_plan(argv: list[str]) -> int:
    """Parse `argv` (the arguments after `plan`), print the estimates, return 0. UserError -> exit 2 upstream."""
    args = build_parser().parse_intermixed_args(argv)  # options and key=value items in any order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft/transformers deprecation chatter on meta models
        rows = _estimates(args)
    lines = plan_launch(args, rows)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif all("error" in r for r in rows):
        raise UserError("; ".join(r["error"] for r in rows))
    else:
        _print_table(rows)
        print("\n".join(lines))
    return 0
