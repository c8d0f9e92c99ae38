"""`tuneforge studio`: argument parsing and the bind check; the work is in app.py and manager.py.

    tuneforge studio [--host 127.0.0.1] [--port 7860] [--runs-dir runs] [--api-key KEY] [--allow DIR ...]
                     [--parallel N] [--upload-max-mb MB]
"""

from __future__ import annotations

import argparse
import os


def cmd_studio(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuneforge.errors import UserError

    try:
        import uvicorn
    except ImportError:
        raise UserError("tuneforge studio needs fastapi and uvicorn: pip install 'tuneforge[studio]'") from None

    from tuneforge.inference.server import check_bind, is_loopback
    from tuneforge.studio.app import LOOPBACK_NAMES, create_app

    api_key = args.api_key or os.environ.get("TUNEFORGE_API_KEY") or None
    check_bind(args.host, api_key)  # a non-loopback address needs a key, as `tuneforge serve`
    runs_dir = Path(args.runs_dir)
    roots = [Path.cwd(), *map(Path, args.allow or [])]
    hosts = LOOPBACK_NAMES if is_loopback(args.host) else ()
    if args.upload_max_mb <= 0:
        raise UserError(f"--upload-max-mb {args.upload_max_mb}: expected a size in MB above 0")
    app = create_app(runs_dir, roots, api_key, hosts, args.parallel,
                     upload_max_bytes=int(args.upload_max_mb * 1024 * 1024))
    where = f"http://{args.host}:{args.port}/" + ("?key=..." if api_key else "")
    print(f"tuneforge studio on {where} (runs in {runs_dir.resolve()}); Ctrl-C stops the studio, "
          "not the runs", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def register(sub) -> None:
    p = sub.add_parser("studio", help="web UI: new runs from a form, live curves, stop / resume (docs/studio.md)",
                       description="A web UI over ordinary tuneforge runs; they keep training when it closes.")
    p.add_argument("--host", default="127.0.0.1", help="bind address; non-loopback needs an API key")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--runs-dir", default="runs", help="where runs are written and found again (default: runs)")
    p.add_argument("--api-key", default=None, help="require this key (prefer the TUNEFORGE_API_KEY environment "
                   "variable: arguments are visible to other users in the process list)")
    p.add_argument("--allow", action="append", metavar="DIR",
                   help="another folder whose models and data files the form may name (default: the working "
                        "directory and --runs-dir)")
    p.add_argument("--parallel", type=int, default=1, help="runs that train at once; the rest queue (default 1)")
    p.add_argument("--upload-max-mb", type=float, default=200,
                   help="largest data file the page may upload into RUNS_DIR/data (default 200)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(fn=cmd_studio)
