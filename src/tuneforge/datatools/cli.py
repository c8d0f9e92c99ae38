"""`tuneforge data`: check, prepare and probe training data.

    tuneforge data check train.jsonl --stage sft --model smollm2-135m-instruct --max-length 512 --out check/
    tuneforge data prepare raw.jsonl --output data/clean --to messages --val-ratio 0.1 --seed 0
    tuneforge data bias runs/quickstart --probe builtin
    tuneforge data cache [--clear [--older-than DAYS]]      (token caches: datatools.cache_cli)

check exits 0 when clean, 1 when it found problems, 2 when the file cannot be read.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from tuneforge.datatools.cache_cli import register as register_cache
from tuneforge.stage_info import STAGE_INFO

STAGE_CHOICES = tuple(STAGE_INFO)  # every stage; its record kind decides the checks


@contextmanager
def _progress(path: str, label: str, enabled: bool):
    """A rich progress bar over the file's bytes (JSONL), on stderr; yields the on_bytes callback."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    size = Path(path).stat().st_size if Path(path).is_file() else None
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True,
                  disable=not enabled) as bar:
        task = bar.add_task(label, total=size)
        yield lambda n: bar.advance(task, n)


def _fields(args: argparse.Namespace):
    from tuneforge.data.records import Fields

    return Fields(text=args.text_field, label=args.label_field, text_pair=args.text_pair_field)


def cmd_check(args: argparse.Namespace) -> int:
    from tuneforge.data.load import iter_records
    from tuneforge.datatools.check import check_records, plot_lengths, to_markdown
    from tuneforge.fsutil import make_temp_dir, move_dir_contents, write_json_atomic, write_text_atomic

    tokenizer = None
    if args.model:
        from tuneforge.data.templates import apply_template
        from tuneforge.models import load_tokenizer

        tokenizer = load_tokenizer(args.model)
        if STAGE_INFO[args.stage].chat_template:  # render chat records as that stage will
            apply_template(tokenizer, args.template)
    with _progress(args.file, "check", not args.no_progress) as on_bytes:
        report = check_records(iter_records(args.file, on_bytes), args.stage, tokenizer=tokenizer,
                               max_length=args.max_length, fields=_fields(args),
                               near_dup_threshold=None if args.no_near_dup else args.near_dup,
                               max_examples=args.max_listed, path=args.file)
    text = to_markdown(report)
    print(text)
    if args.out:
        out = Path(args.out)
        tmp = make_temp_dir(out.parent, f".{out.name}.")
        try:
            write_json_atomic(tmp / "check.json", report.to_dict())
            write_text_atomic(tmp / "check.md", text + ("\n![token lengths](lengths.png)\n" if report.tokens else ""))
            if report.tokens:
                plot_lengths(report, tmp / "lengths.png")
            move_dir_contents(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"wrote {out}/check.md, check.json" + (", lengths.png" if report.tokens else ""), file=sys.stderr)
    return 0 if report.ok else 1


def cmd_prepare(args: argparse.Namespace) -> int:
    from tuneforge.datatools.prepare import PrepareOptions, prepare

    opts = PrepareOptions(stage=args.stage, to=args.to, dedup=not args.no_dedup,
                          near_dup_threshold=None if args.no_near_dup else args.near_dup, pii=not args.no_pii,
                          val_ratio=args.val_ratio, seed=args.seed, fields=_fields(args))
    with _progress(args.file, "prepare", not args.no_progress) as on_bytes:
        stats = prepare(args.file, args.output, opts, overwrite=args.overwrite, on_bytes=on_bytes)
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(stats.dropped.items()) if v) or "none"
    written = ", ".join(f"{k}.jsonl {v}" for k, v in stats.written.items())
    pii = ", ".join(f"{k} {v}" for k, v in sorted(stats.pii.items())) or "none"
    print(f"{stats.read} records read; dropped: {dropped}; PII replaced: {pii}; wrote {args.output}/: {written}, "
          "card.md, prepare.json")
    return 0


def cmd_bias(args: argparse.Namespace) -> int:
    from tuneforge.datatools.bias import load_probes
    from tuneforge.datatools.bias_report import render_markdown, run_bias

    probes = load_probes(args.probe or ["builtin"])
    output = Path(args.output or (Path(args.target) / "bias" if (Path(args.target) / "config.yaml").is_file()
                                  else "bias-report"))
    result = run_bias(args.target, probes, output, args.tolerance, device=args.device)
    print(render_markdown(result))
    print(f"wrote {output}/bias.md, bias.json, bias.png", file=sys.stderr)
    flagged = [n for n, p in result["probes"].items() if p.get("bias_grew")]
    return 1 if flagged and args.fail_on_increase else 0


def _common(p: argparse.ArgumentParser, stage_default: str = "sft") -> None:
    p.add_argument("file", help="JSONL, JSON, CSV or Parquet")
    p.add_argument("--stage", choices=STAGE_CHOICES, default=stage_default)
    p.add_argument("--near-dup", type=float, default=0.85, metavar="T",
                   help="near-duplicate threshold: estimated Jaccard over word 3-grams (default 0.85)")
    p.add_argument("--no-near-dup", action="store_true", help="exact duplicates only")
    p.add_argument("--text-field", default="text", help="pretrain/classify text column")
    p.add_argument("--label-field", default="label", help="classify label column")
    p.add_argument("--text-pair-field", default="text_pair", help="classify optional second text column")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def register(sub) -> None:
    data = sub.add_parser("data", help="check, clean and probe training data", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("check", help="report every problem in a data file (exit 0 clean, 1 problems, 2 unreadable)")
    _common(p)
    p.add_argument("--model", help="tokenizer for length statistics: alias, local directory or hub id")
    p.add_argument("--template", choices=("auto", "chat", "alpaca", "chatml_tools"), default="auto",
                   help="sft prompt template")
    p.add_argument("--max-length", type=int, help="count samples longer than this many tokens")
    p.add_argument("--max-listed", type=int, default=20, help="locations listed per kind of problem (0: all)")
    p.add_argument("--out", help="write check.md, check.json and lengths.png here")
    p.set_defaults(fn=cmd_check)
    p = dsub.add_parser("prepare", help="clean, dedupe, scrub PII, convert and split into JSONL + a data card")
    _common(p)
    p.add_argument("--output", required=True, help="directory for train.jsonl, validation.jsonl, card.md")
    p.add_argument("--to", choices=("alpaca", "prompt_completion", "messages"), help="sft: convert every record")
    p.add_argument("--no-dedup", action="store_true", help="keep duplicates")
    p.add_argument("--no-pii", action="store_true", help="do not scrub emails, phones, IPs, card numbers, keys")
    p.add_argument("--val-ratio", type=float, default=0.0, help="validation share (stratified by label for classify)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace files in a non-empty --output")
    p.set_defaults(fn=cmd_prepare)
    p = dsub.add_parser("bias", help="counterfactual bias probes on a run (base vs tuned) or a model")
    p.add_argument("target", help="run directory, or a model alias / directory (scored alone)")
    p.add_argument("--probe", action="append", help="probe JSON file, or 'builtin' (default; repeatable)")
    p.add_argument("--output", help="default: RUN_DIR/bias, or ./bias-report for a plain model")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="flag a probe when its bias grows by more than this (nats, or flip rate / shift)")
    p.add_argument("--fail-on-increase", action="store_true", help="exit 1 when a probe is flagged")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default: the run's training.device)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(fn=cmd_bias)
    register_cache(dsub)
