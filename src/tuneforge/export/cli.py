"""`tuneforge export`: a run as one GGUF file (merged, converted, verified); see tuneforge.export.gguf.

    tuneforge export runs/quickstart --format gguf --quant q8_0 --output quickstart.gguf
"""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    from tuneforge.export.gguf import export_gguf

    out = export_gguf(args.run_dir, quant=args.quant, output=args.output, runtimes=not args.no_verify,
                      device=args.device)
    print(f"wrote {out} (verification: {out.with_name(out.name + '.json')})")
    return 0


def register(sub) -> None:
    text = "export a run for other runtimes: merge the adapter, convert to GGUF, verify the file"
    p = sub.add_parser("export", help=text, description=text)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", choices=["gguf"], default="gguf", help="output format (gguf)")
    p.add_argument("--quant", choices=["f16", "q8_0"], default="f16", help="tensor type (default f16)")
    p.add_argument("--output", help="default: RUN_DIR/model-QUANT.gguf")
    p.add_argument("--no-verify", action="store_true", help="check names, shapes and template only; "
                   "skip reloading in runtimes and comparing logits")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps: where the adapter is merged "
                   "(default: the run's training.device)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(fn=cmd_export)
