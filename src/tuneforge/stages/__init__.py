"""Stages decide which objective trains the parameters. STAGES maps a name to `run(cfg) -> output_dir`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuneforge.stages import classify, dpo, grpo, ppo, pretrain, reward, sft

STAGES: dict[str, Callable[..., Path]] = {"sft": sft.run, "pretrain": pretrain.run, "classify": classify.run,
                                      "reward": reward.run, "ppo": ppo.run, "dpo": dpo.run,
                                      "grpo": grpo.run}
