"""Stages decide which objective trains the parameters. `STAGES[name]` is the stage's record: its `run(cfg)
-> output_dir` and its `info` (tuneforge.stage_info: model kind, record kind, example builder, template,
chaining, loss unit, metrics), which code outside stages/ reads from stage_info directly.

    out = STAGES[cfg.stage].run(cfg)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneforge.stage_info import STAGE_INFO, StageInfo


@dataclass(frozen=True)
class Stage:
    run: Callable[..., Path]  # run(cfg, log=print, *, on_eval=None) -> output_dir
    info: StageInfo

    def __call__(self, cfg, **kwargs) -> Path:  # STAGES["sft"](cfg) reads as running the stage
        return self.run(cfg, **kwargs)


def _run_of(module: str) -> Callable[..., Path]:
    """The stage module's `run`, imported at the first call: grpo and dpo pull in trl, datasets and mlflow (seconds
    of import), which an sft run never needs."""
    def run(cfg, *args, **kwargs) -> Path:
        return importlib.import_module(f"tuneforge.stages.{module}").run(cfg, *args, **kwargs)

    run.__name__ = run.__qualname__ = f"{module}.run"
    return run


_MODULES = {"sft": "sft", "pretrain": "pretrain", "classify": "classify", "reward": "reward", "dpo": "dpo",
            "ppo": "ppo", "grpo": "grpo", "kto": "preference", "orpo": "preference", "simpo": "preference",
            "cpo": "preference"}
STAGES: dict[str, Stage] = {name: Stage(_run_of(_MODULES[name]), info) for name, info in STAGE_INFO.items()}
