"""Chat with a finished run beside its base model, both through the inference engine (inference/engine.py) and
both with the run's own chat template and system prompt: the tuned side is what `tuneforge chat RUN` answers,
the base side is the base model given the same prompt tokens. The engines of the last run chatted with stay
loaded; one generation at a time.

    pool = ChatPool(); pool.reply(Path("runs/first"), {"base": msgs, "tuned": msgs}, max_new_tokens=64)
"""

from __future__ import annotations

import functools
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError

SIDES = ("base", "tuned")


class ChatPool:
    def __init__(self) -> None:
        self.loaded: tuple[Path, dict[str, Any]] | None = None
        self.lock = threading.Lock()

    def engines(self, run_dir: Path) -> dict[str, Any]:
        """{"base": Engine, "tuned": Engine} for `run_dir` (a finished run of a stage that generates text)."""
        from tuneforge.inference.engine import Engine, check_generates, load_engine
        from tuneforge.models import load_model
        from tuneforge.runs import run_config

        run_dir = run_dir.resolve()
        if self.loaded and self.loaded[0] == run_dir:
            return self.loaded[1]
        if not (run_dir / "metrics.json").is_file():
            raise UserError(f"{run_dir.name}: not finished yet; chat needs the saved model")
        cfg = run_config(run_dir)
        check_generates(run_dir, cfg.stage)
        self.loaded = None  # free the previous run's models first
        tuned = load_engine(run_dir)
        base = Engine(load_model(cfg.model, cfg.trust_remote_code), tuned.tokenizer, "base", tuned.system_prompt,
                      tuned.template, tuned.max_new_tokens, tuned.max_input_tokens)
        self.loaded = (run_dir, {"base": base, "tuned": tuned})
        return self.loaded[1]

    def prepare(self, run_dir: Path, conversations: dict[str, list[dict]], max_new_tokens: int = 64,
                temperature: float = 0.0) -> list[tuple[str, Any, list[int], Any]]:
        """(side, engine, prompt ids, params) per side given: everything checked (a bad message, an unfinished run,
        a prompt over the context are UserErrors) before a token is generated."""
        from tuneforge.inference.engine import Params

        if not any(conversations.get(side) for side in SIDES):
            raise UserError("send at least one conversation: {\"base\": [...], \"tuned\": [...]}")
        if not 1 <= max_new_tokens <= 1024 or not 0 <= temperature <= 2:
            raise UserError("max_new_tokens must be in 1..1024 and temperature in 0..2")
        with self.lock:
            engines = self.engines(run_dir)
        params = Params(max_new_tokens, temperature)
        jobs = []
        for side in SIDES:
            if conversations.get(side):
                engine = engines[side]
                ids = engine.chat_prompt_ids(conversations[side])
                engine.check(ids, max_new_tokens)
                jobs.append((side, engine, ids, params))
        return jobs

    def reply(self, run_dir: Path, conversations: dict[str, list[dict]], max_new_tokens: int = 64,
              temperature: float = 0.0) -> dict[str, Any]:
        """The next assistant turn of each side's conversation (a side left out is not generated)."""
        out = {}
        for side, engine, ids, params in self.prepare(run_dir, conversations, max_new_tokens, temperature):
            with self.lock:
                result = engine.generate(ids, params)
            out[side] = _done(result)
        return out

    def stream(self, jobs: list[tuple[str, Any, list[int], Any]]) -> Iterator[str]:
        """JSON lines as the replies are decoded: {"side", "text"} pieces, then {"side", "done": {...}} per side;
        a failure mid-way is an {"error"} line (the response has started)."""
        events: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                for side, engine, ids, params in jobs:
                    with self.lock:
                        result = engine.generate(ids, params, functools.partial(_piece, events, side))
                    events.put({"side": side, "done": _done(result)})
            except Exception as exc:  # one line for the page, never a traceback
                events.put({"error": f"generation failed: {type(exc).__name__}: {str(exc)[:200]}"})
            finally:
                events.put(None)

        threading.Thread(target=work, name="studio-chat", daemon=True).start()
        while (event := events.get()) is not None:
            yield json.dumps(event) + "\n"


def _piece(events: queue.Queue, side: str, text: str) -> None:
    events.put({"side": side, "text": text})


def _done(result) -> dict[str, Any]:
    return {"text": result.text, "finish_reason": result.finish_reason, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens}
