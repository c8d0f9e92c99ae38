"""The `tuneforge` command line: parse, load the config, call one function. No training logic here.

    tuneforge train CONFIG.yaml [dotted.key=value ...] [--debug]
    tuneforge validate CONFIG.yaml [dotted.key=value ...]
    tuneforge merge RUN_DIR [--output DIR]
    tuneforge merge --combine RUN_A RUN_B ... --how linear|ties|dare_ties|... --weights 0.5,0.5 --output DIR
    tuneforge plan [CONFIG.yaml] [model=M method.name=lora method.r=8 training.batch_size=4 ...] [--budget-gb G]
    tuneforge compare CONFIG.yaml [--methods full,lora,...] [--lr full=5e-5]
    tuneforge predict RUN_DIR --input FILE [--output FILE] [--base]
    tuneforge data check|prepare|bias ...        (tuneforge.datatools.cli)
    tuneforge chat RUN_DIR|MODEL [--system TEXT] [--max-tokens N]   (tuneforge.inference.cli)
    tuneforge serve RUN_DIR|MODEL [--host --port --api-key]          (tuneforge.inference.cli)
    tuneforge eval RUN_DIR|MODEL --data FILE      (tuneforge.evaluation.cli)
    tuneforge export RUN_DIR --format gguf        (tuneforge.export.cli)
    tuneforge studio [--host --port --runs-dir --api-key]   (tuneforge.studio.cli)
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import os
import sys
import threading
import warnings

from tuneforge.errors import TrainingInterrupted, UserError


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    # peft 0.21.2 calls transformers 5.23's deprecated is_gradient_checkpointing on every save/forward
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def cmd_train(args: argparse.Namespace) -> int:
    from tuneforge.config.load import load_config
    from tuneforge.stages import STAGES

    if getattr(args, "nproc", 1) > 1 and "WORLD_SIZE" not in os.environ:  # not yet under a launcher
        from tuneforge.train.distributed import relaunch

        return relaunch(args.nproc, ["train", args.config, *args.overrides, *(["--debug"] if args.debug else [])])
    cfg = load_config(args.config, args.overrides)
    out = STAGES[cfg.stage].run(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {out}")  # the stage's last line named what it saved
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check the config and build the run's data as training will (the same checked reader, train / eval split
    and example builder: data.stage_data.load_stage_data), then print the counts of that build."""
    from tuneforge.config.checks import check_config
    from tuneforge.config.load import load_config
    from tuneforge.data.stage_data import counts_line, load_stage_data
    from tuneforge.models import load_tokenizer
    from tuneforge.stage_info import stage_info

    cfg = load_config(args.config, args.overrides)
    check_config(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    data = load_stage_data(cfg, tokenizer, log=print)
    for split, summary in data.summary.items():
        print(counts_line(split, summary))
    block = getattr(cfg, stage_info(cfg.stage).block or "", None)
    if block is not None and hasattr(block, "rewards"):
        from tuneforge.rl.rewards import load_rewards

        print(f"rewards: {', '.join(load_rewards(block.rewards, f'{cfg.stage}.rewards').names)}")
    print(f"{args.config}: valid")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    if args.combine:
        from tuneforge.export.combine import combine, parse_weights

        if args.run_dir or not args.output:
            raise UserError("merge --combine RUN_A RUN_B ... takes its runs after --combine and needs --output DIR")
        combine(args.combine, args.output, args.how, parse_weights(args.weights, len(args.combine)), args.density,
                args.atol, args.seed, device=args.device)
        return 0
    from tuneforge.export.merge import merge

    if not args.run_dir:
        raise UserError("merge: give RUN_DIR (or --combine RUN_A RUN_B ... --output DIR)")
    merge(args.run_dir, args.output, args.atol, device=args.device)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuneforge.compare import compare, parse_lr
    from tuneforge.config.checks import check_config
    from tuneforge.config.load import load_config
    from tuneforge.device import device_overrides, resolve_device
    from tuneforge.methods import METHODS, check_compat

    overrides = device_overrides(args.device, args.overrides)  # --device checked before the first run
    cfg = load_config(args.config, overrides)
    check_config(cfg)
    resolve_device(cfg.training.device)  # a config naming a device this machine lacks: exit 2 before any run
    if args.methods is None:  # every method the stage supports
        methods = [name for name, method in METHODS.items() if cfg.stage in method.stages]
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in methods:  # the whole table is checked before the first run starts
        check_compat(name, cfg.stage)
    output = Path(args.output or f"{cfg.output_dir}-compare")
    rows = compare(cfg, methods, parse_lr(args.lr), output)
    failed = [r["method"] for r in rows if r["status"] != "ok"]
    print(f"wrote {output}/compare.md, compare.json, compare.png"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 0 if not failed else 1


# Subcommands that live beside their feature. Each module has `register(sub)`, which adds its parser(s)
# with `set_defaults(fn=...)` and keeps heavy imports inside the command function.
COMMAND_MODULES: tuple[str, ...] = ("tuneforge.evaluation.cli", "tuneforge.export.cli", "tuneforge.inference.cli",
                                     "tuneforge.datatools.cli", "tuneforge.hpo.cli", "tuneforge.studio.cli")


def cmd_predict(args: argparse.Namespace) -> int:
    from tuneforge.predict import run_predict

    summary = run_predict(args.run_dir, args.input, args.output, args.base, args.batch_size, args.device)
    where = args.output or "stdout"
    extra = f", accuracy {summary['accuracy']:.4f} against the input's labels" if "accuracy" in summary else ""
    print(f"predicted {summary['rows']} rows -> {where}{extra}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description="Fine-tune LLMs from one config.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in (("train", cmd_train, "fine-tune a model from a YAML config"),
                           ("validate", cmd_validate, "check a config and its data without training")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", help="YAML config file")
        p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. training.max_steps=10")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.set_defaults(fn=fn)
    sub.choices["train"].add_argument("--nproc", type=int, default=1, help="processes on this machine (data "
                                      "parallel; re-runs itself under torchrun; see docs/distributed.md)")
    sub.add_parser("plan", help="parameters and memory per method from a config (or model=... method.r=8 keys), "
                   "without loading weights", add_help=False)
    p = sub.add_parser("merge", help="fold a LoRA / DoRA / IA3 / QLoRA adapter into a standalone model, verified "
                       "(--combine: several LoRA runs, docs/merge.md)")
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--output", help="default: RUN_DIR/merged (required with --combine)")
    p.add_argument("--atol", type=float, default=1e-4, help="max |logit diff| merged vs adapter (fp32)")
    p.add_argument("--combine", nargs="+", metavar="RUN", help="combine these LoRA runs (same base) into one model")
    p.add_argument("--how", default="linear", help="peft add_weighted_adapter type: linear, cat, ties, dare_linear, "
                   "dare_ties, svd, ... (default linear)")
    p.add_argument("--weights", help="one per run, e.g. 0.5,0.5 (default: equal, summing to 1)")
    p.add_argument("--density", type=float, help="fraction kept by ties / dare_* / magnitude_prune (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed for dare's random drop")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default: the run's training.device)")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(fn=cmd_merge)
    p = sub.add_parser("compare", help="run several methods on the same data and budget; tabulate cost and gain")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides applied to every method")
    p.add_argument("--methods", help="comma-separated method names (default: every method in "
                   "tuneforge.methods.METHODS that supports the config's stage)")
    p.add_argument("--lr", help="per-method learning rates, e.g. full=5e-5,prompt=3e-2")
    p.add_argument("--output", help="default: OUTPUT_DIR-compare")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps for every run (default: training.device)")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("predict",
                       help="label a CSV/JSONL file with a classify run (labels + probabilities, input order)")
    p.add_argument("run_dir")
    p.add_argument("--input", required=True, help="CSV or JSONL with the run's text column(s)")
    p.add_argument("--output", help="CSV or JSONL file (by suffix); default: stdout in the input's format")
    p.add_argument("--base", action="store_true", help="use the base model with the untrained head (for comparison)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default: the run's training.device)")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(fn=cmd_predict)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def cmd_plan(args: argparse.Namespace) -> int:
    from tuneforge.plan import run_plan

    return run_plan(args.plan_args)


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Like parse_args, but `dotted.key=value` overrides may also follow an option (`train C --nproc 2 k=v`):
    argparse ends a positional list at the first option, so what is left over is taken as overrides."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def exit_now(code: int) -> None:
    """End this process at once, without the interpreter's teardown (freeing every module and object of torch,
    transformers, trl ...): after SIGINT / SIGTERM that teardown was the slow part of the exit, measured on
    2 cores at load 17: signal -> checkpoint complete 0.8 s, atexit handlers 0.7 s, teardown 50 s. Called only
    once the checkpoint is complete (fsynced, marker last) and the metric logs are closed; other threads are
    joined and atexit handlers run, as at a normal exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run a command. As the program (no `argv`: the console script, `python -m tuneforge`) an interrupted
    training ends the process with exit_now; called with `argv` (tests, other code) it returns the code."""
    as_program = argv is None
    if as_program:  # Python's exit collects every object torch / transformers made (~1 CPU s, bench/startup.py);
        atexit.register(gc.freeze)  # frozen, that collection skips them (atexit handlers and flushes still run)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plan"]:  # plan has its own option parser (run_plan)
        args = argparse.Namespace(fn=cmd_plan, plan_args=[a for a in argv[1:] if a != "--debug"],
                                  debug="--debug" in argv)
    else:
        args = parse(build_parser(), argv)
    _quiet_libraries()
    try:
        return args.fn(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except TrainingInterrupted as exc:
        print(f"interrupted (signal {exc.signum}); complete checkpoint at {exc.checkpoint}; "
              "continue with resume=auto", file=sys.stderr)
        if as_program:  # a stop signal comes with a grace period (docker stop: 10 s) before SIGKILL
            exit_now(128 + exc.signum)
        return 128 + exc.signum
    except KeyboardInterrupt:  # outside the training loop (loading, evaluating): nothing to save
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, permissions, a vanished file: the OS's words and the path
        if args.debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 74  # EX_IOERR, as a checkpoint that could not be written
    except Exception as exc:  # a bug or a library failure: one line (secrets masked); the traceback with --debug
        if args.debug:
            raise
        from tuneforge.secrets import redact_text

        print(f"error: unexpected {type(exc).__name__}: {redact_text(str(exc))}\n"
              "  rerun with --debug for the traceback", file=sys.stderr)
        return 1
