"""Stages decide which objective trains the parameters. `STAGES[name]` is the stage's record: its `run(cfg)
-> output_dir` and its `info` (tuneforge.stage_info: model kind, record kind, example builder, template,
chaining, loss unit, metrics), which code outside stages/ reads from stage_info directly.

    out = STAGES[cfg.stage].run(cfg)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneforge.stage_info import STAGE_INFO, StageInfo
from tuneforge.stages import classify, dpo, grpo, ppo, preference, pretrain, reward, sft


@dataclass(frozen=True)
class Stage:
    run: Callable[..., Path]  # run(cfg, log=print, *, on_eval=None) -> output_dir
    info: StageInfo

    def __call__(self, cfg, **kwargs) -> Path:  # STAGES["sft"](cfg) reads as running the stage
        return self.run(cfg, **kwargs)


_RUNS = {"sft": sft.run, "pretrain": pretrain.run, "classify": classify.run, "reward": reward.run, "dpo": dpo.run,
         "ppo": ppo.run, "grpo": grpo.run,
         "kto": preference.run, "orpo": preference.run, "simpo": preference.run, "cpo": preference.run}
STAGES: dict[str, Stage] = {name: Stage(_RUNS[name], info) for name, info in STAGE_INFO.items()}
