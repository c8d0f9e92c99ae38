"""Chat with a finished run beside its base model, both through the inference engine (inference/engine.py) and
both with the run's own chat template and system prompt: the tuned side is what `tuneforge chat RUN` answers,
the base side is the base model given the same prompt tokens. The engines of the last run chatted with stay
loaded; one generation at a time.

    pool = ChatPool(); pool.reply(Path("runs/first"), {"base": msgs, "tuned": msgs}, max_new_tokens=64)
"""

from __future__ import annotations

import threading
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

    def reply(self, run_dir: Path, conversations: dict[str, list[dict]], max_new_tokens: int = 64,
              temperature: float = 0.0) -> dict[str, Any]:
        """The next assistant turn of each side's conversation (a side left out is not generated)."""
        from tuneforge.inference.engine import Params

        if not any(conversations.get(side) for side in SIDES):
            raise UserError("send at least one conversation: {\"base\": [...], \"tuned\": [...]}")
        if not 1 <= max_new_tokens <= 1024 or not 0 <= temperature <= 2:
            raise UserError("max_new_tokens must be in 1..1024 and temperature in 0..2")
        with self.lock:
            engines = self.engines(run_dir)
            out = {}
            for side in SIDES:
                messages = conversations.get(side)
                if not messages:
                    continue
                engine = engines[side]
                ids = engine.chat_prompt_ids(messages)
                result = engine.generate(ids, Params(max_new_tokens, temperature))
                out[side] = {"text": result.text, "finish_reason": result.finish_reason,
                             "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
            return out
