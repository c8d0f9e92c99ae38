"""A finished reward run as a scorer (the reward source `{run: ...}` of ppo / grpo).

    score = load_reward_model("runs/reward")
    score.score_pairs(prompts, completions) -> [reward, ...]   # tokenized as the reward run's pairs were
    score(["<rendered text>", ...]) -> [reward, ...]           # texts already rendered (data.preference.to_text)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsExample, collate_cls
from tuneforge.data.fields import Messages
from tuneforge.data.preference import encode, to_ids, use_template
from tuneforge.errors import ModelError
from tuneforge.models.classifier import forward_logits, pads_left
from tuneforge.runs import load_run, run_config, run_labels
from tuneforge.stage_info import stage_info
from tuneforge.train.precision import autocast, resolve_precision


@dataclass
class RewardModel:
    """Scores (prompt, completion) pairs the way the reward run's training pairs were tokenized."""

    model: torch.nn.Module
    tokenizer: object
    cfg: Config
    templated: bool = False  # the run's chat template renders the pair (data.preference.use_template)

    def score_pairs(self, prompts: list[str | Messages | None], completions: list[str | Messages],
                    batch_size: int = 16) -> list[float]:
        """Each prompt + completion as data.preference.to_ids builds a training pair of this run: its template,
        its data.special_tokens_in_text (control tokens written in them plain text by default), its max_length."""
        max_length, special = self.cfg.training.max_length, self.cfg.data.special_tokens_in_text
        ids = [to_ids(self.tokenizer, p, c, self.templated, max_length, special)
               for p, c in zip(prompts, completions, strict=True)]
        return self.score_ids(ids, batch_size)

    def __call__(self, texts: list[str], batch_size: int = 16) -> list[float]:
        """Texts already rendered (their control tokens special, as the template wrote them)."""
        return self.score_ids([encode(self.tokenizer, t, self.cfg.training.max_length) for t in texts], batch_size)

    @torch.no_grad()
    def score_ids(self, ids: list[list[int]], batch_size: int = 16) -> list[float]:
        examples = [ClsExample(i, None, 0) for i in ids]
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
    return RewardModel(model.eval(), tokenizer, cfg, use_template(cfg, tokenizer))
