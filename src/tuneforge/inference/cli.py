"""`tuneforge chat` and `tuneforge serve`: argument parsing only; the work is in chat.py and server.py.

    tuneforge chat runs/quickstart [--system TEXT] [--max-tokens N] [--temperature T] [--tools TOOLS.json]
    tuneforge serve runs/quickstart [--host 127.0.0.1] [--port 8000] [--api-key KEY]
"""

from __future__ import annotations

import argparse
import os


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_DIR|MODEL",
                   help="a run directory, a merged / Hugging Face model directory, or a model alias")
    p.add_argument("--system", default=None,
                   help="system prompt (default: the one the run trained with; '' for none)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="upper bound on generated tokens per reply (default: min(512, context/4))")
    p.add_argument("--max-input-tokens", type=int, default=None,
                   help="upper bound on prompt tokens (default: context minus --max-tokens)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model directory")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (auto: CUDA, else MPS, else CPU)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _engine(args: argparse.Namespace):
    from tuneforge.errors import ConfigError
    from tuneforge.inference.engine import load_engine

    for key in ("max_tokens", "max_input_tokens"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1")
    from tuneforge.device import select

    device = select(args.device, "--device")  # before the model loads: a missing device fails fast
    engine = load_engine(args.source, args.system, args.max_tokens, args.max_input_tokens, args.trust_remote_code)
    if device.type != "cpu":
        engine.model.to(device)
    return engine


def cmd_chat(args: argparse.Namespace) -> int:
    from tuneforge.errors import ConfigError
    from tuneforge.inference.chat import run_chat
    from tuneforge.inference.engine import Params

    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError("--temperature must be >= 0 and --top-p in (0, 1]")
    tools = _tools(args.tools) if args.tools else None
    engine = _engine(args)
    return run_chat(engine, Params(engine.max_new_tokens, args.temperature, args.top_p, args.seed), tools=tools)


def _tools(path: str) -> list:
    """--tools FILE: a JSON function list (OpenAI's shape), checked before the model loads."""
    import json

    from tuneforge.data.tools import check_tools
    from tuneforge.errors import ConfigError

    try:
        raw = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--tools {path}: cannot read a JSON function list ({exc})") from None
    issues: list = []
    tools = check_tools(raw, issues)
    if tools is None:
        raise ConfigError(f"--tools {path}: {issues[0].message}")
    return tools


def cmd_serve(args: argparse.Namespace) -> int:
    from tuneforge.errors import ConfigError
    from tuneforge.inference.server import check_bind, run_server

    api_key = args.api_key or os.environ.get("TUNEFORGE_API_KEY") or None
    check_bind(args.host, api_key)  # before the model loads: a refused bind fails fast
    if args.max_queue < 0:
        raise ConfigError("--max-queue must be >= 0")
    engine = _engine(args)
    if args.model_name:
        engine.name = args.model_name
    run_server(engine, args.host, args.port, api_key, args.max_queue)
    return 0


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a run or model in the terminal (streaming)",
                       description="Interactive chat; /reset clears the history, /exit or Ctrl-D quits.")
    _add_model_args(p)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--tools", default=None, metavar="TOOLS.json",
                   help="a JSON function list shown to the model; its calls are printed, /tool RESULT answers")
    p.set_defaults(fn=cmd_chat)

    p = sub.add_parser("serve", help="serve a run or model over an OpenAI-compatible HTTP API",
                       description="OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions.")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address; non-loopback needs an API key")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (prefer the TUNEFORGE_API_KEY environment variable: "
                        "arguments are visible to other users in the process list)")
    p.add_argument("--model-name", default=None, help="model id clients send (default: the run directory's name)")
    p.add_argument("--max-queue", type=int, default=16, help="requests that may wait; beyond it answer 429")
    p.set_defaults(fn=cmd_serve)
