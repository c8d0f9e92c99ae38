"""Reward model on pairwise preferences: the base as a sequence classifier with one output (the reward),
trained so that r(chosen) > r(rejected). Metrics before (untrained head) and after: pairwise accuracy,
mean reward margin, mean chosen / rejected reward, loss. The run loads back as a scorer for PPO / GRPO.

    tuneforge train reward.yaml          # stage: reward; docs/reward.md has a config
    score = tuneforge.rl.reward_model.load_reward_model("runs/reward"); score(["<text>", ...]) -> [reward, ...]

The loss is TRL's RewardTrainer loss (trl 1.x reward_trainer.py, without its optional margin / centring
terms): -logsigmoid(r_chosen - r_rejected), here summed per pair and divided by the pairs of the optimizer
step, so gradient accumulation equals the big batch. It runs in tuneforge's own loop (train/loop.py), not
RewardTrainer, so the stage gets the same atomic checkpoints, exact resume, SIGINT handling and
non-finite-step skipping as every other stage. A pair goes through the model as two rows of one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

import tuneforge.stages.skeleton as skeleton
from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsBatch, collate_cls
from tuneforge.data.preference import PairExample
from tuneforge.fsutil import write_json_atomic
from tuneforge.models.classifier import forward_logits, pads_left
from tuneforge.report.margins import plot_margins
from tuneforge.train.loop import Objective, train
from tuneforge.train.precision import autocast

LABELS = ["reward"]


def collate_pairs(pairs: list[PairExample], pad_id: int, left: bool) -> ClsBatch:
    """One padded batch of 2n rows: the n chosen, then the n rejected; the loss averages over pairs."""
    batch = collate_cls([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, left)
    return replace(batch, n_supervised=len(pairs))


def pair_rewards(model, batch: ClsBatch) -> tuple[torch.Tensor, torch.Tensor]:
    rewards = forward_logits(model, batch).squeeze(-1)
    return rewards.chunk(2)


def pair_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley-Terry loss, as TRL's RewardTrainer.compute_loss (before its mean)."""
    return -F.logsigmoid(chosen - rejected)


@torch.no_grad()
def score_pairs(model, pairs: list[PairExample], pad_id: int, left: bool, batch_size: int,
                precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen [n], r_rejected [n]) in the order of `pairs`."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        with autocast(precision):
            c, r = pair_rewards(model, collate_pairs(pairs[i : i + batch_size], pad_id, left))
        chosen.append(c)
        rejected.append(r)
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    margin = chosen - rejected
    return {"loss": float(pair_loss(chosen, rejected).mean()), "accuracy": float((margin > 0).float().mean()),
            "margin_mean": float(margin.mean()), "chosen_reward_mean": float(chosen.mean()),
            "rejected_reward_mean": float(rejected.mean())}


def reward_objective(cfg: Config, tokenizer, precision: str) -> Objective:
    pad_id, left, bs = tokenizer.pad_token_id, pads_left(tokenizer), cfg.training.batch_size

    def loss_sum(model, batch: ClsBatch) -> torch.Tensor:
        return pair_loss(*pair_rewards(model, batch)).sum()

    def evaluate(model, pairs: list[PairExample]) -> dict:
        return pair_metrics(*score_pairs(model, pairs, pad_id, left, bs, precision))

    return Objective(collate=lambda pairs: [collate_pairs(pairs, pad_id, left)], loss_sum=loss_sum,
                     evaluate=evaluate)


def _section(before: dict, after: dict) -> str:
    lines = ["## Reward model", "", "![reward margins](margins.png)", "", "| metric | base (untrained head) | tuned |",
             "|---|---|---|"]
    for key in ("accuracy", "margin_mean", "chosen_reward_mean", "rejected_reward_mean", "loss"):
        b = f"{before[key]:.4f}" if key in before else "-"
        lines.append(f"| {key} | {b} | {after[key]:.4f} |")
    return "\n".join(lines)


def run(cfg: Config, log: Callable[[str], None] = print, *, on_eval: Callable[[int, dict], None] | None = None) -> Path:
    run = skeleton.begin(cfg, log)
    data = skeleton.load_data(run)
    out = skeleton.open_output(run)
    if run.main:
        write_json_atomic(out / "labels.json", {"labels": LABELS})
    model = skeleton.load_base(run, LABELS)
    objective = reward_objective(cfg, run.tokenizer, run.precision)
    pad_id, left = run.tokenizer.pad_token_id, pads_left(run.tokenizer)

    def margins_of(m) -> list[float]:
        c, r = score_pairs(m, data.eval, pad_id, left, cfg.training.batch_size, run.precision)
        return (c - r).tolist()

    before, details = (skeleton.eval_before(run, lambda: (objective.evaluate(model, data.eval),
                                                          {"margins": margins_of(model)}))
                       if data.eval else ({}, {}))
    model, counts = skeleton.apply_method(run, model)

    result = train(model, data.train, data.eval, cfg, out, run.precision, log=run.log, objective=objective,
                   on_eval=on_eval)
    after = objective.evaluate(model, data.eval) if data.eval and run.main else {}
    section = ""
    if after:
        base = {"base (untrained head)": details["margins"]} if details.get("margins") else {}
        plot_margins(base | {"tuned": margins_of(model)}, out / "margins.png")
        section = _section(before, after)
    outcome = skeleton.Outcome(result, counts, before, after, data.summary, section=section, extra={"labels": LABELS})
    return skeleton.finish(run, model, outcome)
