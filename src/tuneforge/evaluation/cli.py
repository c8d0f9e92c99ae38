"""`tuneforge eval`: base vs tuned (or one model) on a data file; see tuneforge.evaluation.run_eval.

    tuneforge eval runs/quickstart --data examples/data/quickstart/eval.jsonl [--metrics loss exact_match]
"""

from __future__ import annotations

import argparse


def _names(values: list[str] | None) -> list[str] | None:
    """--metrics accepts `a b`, `a,b` or both."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()] if values else None


def cmd_eval(args: argparse.Namespace) -> int:
    from tuneforge.evaluation.request import Request
    from tuneforge.evaluation.run_eval import evaluate

    out = evaluate(Request(target=args.target, data=args.data, metrics=_names(args.metrics), output=args.output,
                           max_samples=args.max_samples, max_new_tokens=args.max_new_tokens,
                           precision=args.precision, device=args.device))
    print(f"wrote {out}/eval.json, eval.md, eval.html, eval.png, rows.jsonl")
    return 0


def register(sub) -> None:
    text = "evaluate a run (base and tuned on the same rows) or a model on a data file"
    p = sub.add_parser("eval", help=text, description=text)
    p.add_argument("target", metavar="RUN_DIR|MODEL", help="a run directory, or a model alias / directory / hub id")
    p.add_argument("--data", required=True, help="JSONL, JSON, CSV or Parquet file (sft, pretrain or classify rows)")
    p.add_argument("--metrics", nargs="+", help="loss perplexity exact_match token_f1 rouge_l bleu chrf "
                   "(classification: accuracy macro_f1); default: all that apply to the stage")
    p.add_argument("--output", help="default: RUN_DIR/eval-DATASTEM, or ./eval-MODEL-DATASTEM")
    p.add_argument("--max-samples", type=int, help="use the first N rows (default: every row; the report says N of M)")
    p.add_argument("--max-new-tokens", type=int, help="default: the run's eval.max_new_tokens")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="default: the run's training.precision")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default: the run's training.device)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(fn=cmd_eval)
