"""A finished reward run as a scorer (the reward source `{run: ...}` of ppo / grpo).

    score = load_reward_model("runs/reward"); score(["<text>", ...]) -> [reward, ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsExample, collate_cls
from tuneforge.data.preference import encode
from tuneforge.errors import ModelError
from tuneforge.models.classifier import forward_logits, pads_left
from tuneforge.runs import load_run, run_config, run_labels
from tuneforge.stage_info import stage_info
from tuneforge.train.precision import autocast, resolve_precision


@dataclass
class RewardModel:
    """Scores texts already rendered like the training data (data.preference.to_text)."""

    model: torch.nn.Module
    tokenizer: object
    cfg: Config

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 16) -> list[float]:
        examples = [ClsExample(encode(self.tokenizer, t, self.cfg.training.max_length), None, 0) for t in texts]
        precision = resolve_precision(self.cfg.training.precision)
        pad_id, left, scores = self.tokenizer.pad_token_id, pads_left(self.tokenizer), []
        for i in range(0, len(examples), batch_size):
            with autocast(precision):
                batch = collate_cls(examples[i : i + batch_size], pad_id, left)
                scores += forward_logits(self.model, batch)[:, 0].tolist()
        return scores


def load_reward_model(run_dir: str | Path) -> RewardModel:
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if stage_info(cfg.stage).model_kind != "scorer" or len(run_labels(run_dir)) != 1:
        raise ModelError(f"{run_dir}: a {cfg.stage} run; a reward model needs a finished reward run")
    model, tokenizer, cfg = load_run(run_dir)
    return RewardModel(model.eval(), tokenizer, cfg)
