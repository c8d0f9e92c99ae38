"""Reward model on pairwise preferences: the base as a sequence classifier with one output (the reward),
trained so that r(chosen) > r(rejected). Metrics before (untrained head) and after: pairwise accuracy,
mean reward margin, mean chosen / rejected reward, loss. The run loads back as a scorer for PPO / GRPO.

    tuneforge train reward.yaml          # stage: reward; docs/reward.md has a config
    score = load_reward_model("runs/reward"); score(["<text>", ...]) -> [reward, ...]

The loss is TRL's RewardTrainer loss (trl 1.x reward_trainer.py, without its optional margin / centring
terms): -logsigmoid(r_chosen - r_rejected), here summed per pair and divided by the pairs of the optimizer
step, so gradient accumulation equals the big batch. It runs in tuneforge's own loop (train/loop.py), not
RewardTrainer, so the stage gets the same atomic checkpoints, exact resume, SIGINT handling and
non-finite-step skipping as every other stage. A pair goes through the model as two rows of one batch.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from tuneforge.config.load import dump_config
from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsBatch, ClsExample, collate_cls
from tuneforge.data.dataset import load_train_eval_records
from tuneforge.data.preference import PairExample, encode, load_pair_examples
from tuneforge.fsutil import write_json_atomic
from tuneforge.methods import METHODS, count_params
from tuneforge.models import load_tokenizer
from tuneforge.report.write import write_report
from tuneforge.stages.classify import apply_method_with_head, forward_logits, load_base_classifier, pads_left
from tuneforge.stages.lm import _save_model, check_config, cost_metrics, prepare_output_dir_once, start_ranks
from tuneforge.train import distributed as ddp
from tuneforge.train.loop import Objective, train
from tuneforge.train.precision import autocast, resolve_precision

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


def plot_margins(margins: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5))
    every = [v for values in margins.values() for v in values]
    bins = np.linspace(min(every), max(every), 41) if every else 40  # shared bins: the runs compare bar by bar
    for name, values in margins.items():
        ax.hist(values, bins=bins, alpha=0.6, label=name)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel="reward margin r(chosen) - r(rejected), eval pairs", ylabel="pairs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _section(before: dict, after: dict) -> str:
    lines = ["## Reward model", "", "![reward margins](margins.png)", "", "| metric | base (untrained head) | tuned |",
             "|---|---|---|"]
    for key in ("accuracy", "margin_mean", "chosen_reward_mean", "rejected_reward_mean", "loss"):
        b = f"{before[key]:.4f}" if key in before else "-"
        lines.append(f"| {key} | {b} | {after[key]:.4f} |")
    return "\n".join(lines)


def _eval_before(objective: Objective, model, eval_pairs: list[PairExample], cfg: Config, out: Path,
                 margins_of: Callable, log: Callable[[str], None]) -> tuple[dict, list[float]]:
    """Computed once and kept in eval_before.json, so a resumed run reports the same base."""
    before_file = out / "eval_before.json"
    if not (ddp.is_main() and cfg.eval.before and eval_pairs):
        return {}, []
    if not before_file.is_file():
        log("evaluating the base model (untrained head) ...")
        margins = margins_of(model)
        write_json_atomic(before_file, {"metrics": objective.evaluate(model, eval_pairs), "margins": margins})
    saved = json.loads(before_file.read_text())
    return saved["metrics"], saved["margins"]


def run(cfg: Config, log: Callable[[str], None] = print, *, on_eval: Callable[[int, dict], None] | None = None) -> Path:
    wall_start = time.perf_counter()
    log = start_ranks(log)
    check_config(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    train_records, eval_records = load_train_eval_records(cfg, log)
    train_pairs, train_stats = load_pair_examples(cfg, tokenizer, train_records)
    eval_pairs, eval_stats = (load_pair_examples(cfg, tokenizer, eval_records[: cfg.eval.max_samples])
                              if eval_records else ([], None))
    data_stats = {"train": train_stats.summary(), **({"eval": eval_stats.summary()} if eval_stats else {})}
    log(f"data: {len(train_pairs)} train / {len(eval_pairs)} eval pairs "
        f"({train_stats.dropped_identical} identical pairs dropped)")

    out = prepare_output_dir_once(cfg)  # nothing is written before every input above checked out
    if ddp.is_main():
        write_json_atomic(out / "labels.json", {"labels": LABELS})
    random.seed(cfg.seed)
    precision = resolve_precision(cfg.training.precision)
    method = METHODS[cfg.method.name]
    model = load_base_classifier(cfg, LABELS)
    objective = reward_objective(cfg, tokenizer, precision)
    pad_id, left = tokenizer.pad_token_id, pads_left(tokenizer)

    def margins_of(m) -> list[float]:
        c, r = score_pairs(m, eval_pairs, pad_id, left, cfg.training.batch_size, precision)
        return (c - r).tolist()

    eval_before, margins_before = _eval_before(objective, model, eval_pairs, cfg, out, margins_of, log)
    model = apply_method_with_head(model, cfg)
    trainable, total = count_params(model)
    log(f"method {cfg.method.name}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")

    result = train(model, train_pairs, eval_pairs, cfg, out, precision, log=log, objective=objective, on_eval=on_eval)
    if not ddp.is_main():
        ddp.shutdown()  # waits at a barrier until rank 0 has written everything
        return out
    eval_after = objective.evaluate(model, eval_pairs) if eval_pairs else {}
    _save_model(model, tokenizer, out, method)
    metrics = {
        "model": cfg.model, "stage": cfg.stage, "method": cfg.method.name, "labels": LABELS,
        "eval_before": eval_before or None,
        "eval_after": eval_after,
        "train": cost_metrics(result, wall_start, model, trainable, total, precision, "pairs"),
        "evals": result.evals,
        "data": data_stats,
    }
    extra = ""
    if eval_after:
        plot_margins(({"base (untrained head)": margins_before} if margins_before else {}) | {
            "tuned": margins_of(model)}, out / "margins.png")
        extra = _section(eval_before, eval_after)
    write_report(out, metrics, [], result.history, result.evals, dump_config(cfg), extra=extra)
    ddp.shutdown()
    return out


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
                scores += forward_logits(self.model, collate_cls(examples[i : i + batch_size], pad_id, left))[:, 0].tolist()
        return scores


def load_reward_model(run_dir: str | Path) -> RewardModel:
    """A finished reward run as a scorer (the reward source for ppo / grpo)."""
    from tuneforge.errors import ModelError
    from tuneforge.runs import load_run, run_config, run_labels

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if cfg.stage != "reward" or run_labels(run_dir) != LABELS:
        raise ModelError(f"{run_dir}: a {cfg.stage} run; a reward model needs a finished reward run")
    model, tokenizer, cfg = load_run(run_dir)
    return RewardModel(model.eval(), tokenizer, cfg)
