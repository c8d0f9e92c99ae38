"""What the preference stages (dpo, kto, orpo, simpo, cpo) share around TRL's trainers: response log-probs
scored as training batches them (the before / after metrics are computed from these, not from TRL's logs), the
real-token counter and the per-step stats / periodic-evaluation callback, the training call itself with those
callbacks (train_with_callbacks), and the template name saved with a run.

    chosen, rejected, n_chosen, n_rejected = response_logps(model, pairs, batch_size, precision)
    logps, n_tokens = completion_logps(model, rows, batch_size, precision)       # kto rows
    trained = train_with_callbacks(cfg, out, build, evaluate, on_eval, resumed_from, log)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from tuneforge.config.schema import Config
from tuneforge.data.templates import ALPACA_TEMPLATE
from tuneforge.train import distributed as ddp
from tuneforge.train import frozen, hf_bridge
from tuneforge.train.guards import run_guards
from tuneforge.train.loop import TrainResult
from tuneforge.train.precision import autocast


def collate_pairs(examples: list) -> dict:
    """TRL's own DPO collator: the batch layout training sees ([chosen..., rejected...], right padding)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DataCollatorForPreference(pad_token_id=0)([e.row() for e in examples])


def _collate_completions(sequences: list[tuple[list[int], list[int]]]) -> dict:
    """(prompt ids, completion ids) rows, right-padded, with the completion's positions marked."""
    width = max(len(p) + len(c) for p, c in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    attention, completion = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (p, c) in enumerate(sequences):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attention[i, : len(p) + len(c)] = 1
        completion[i, len(p) : len(p) + len(c)] = 1
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


def _summed_logps(model, batch: dict, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs of the completion tokens, their count) per row; a softmax only where they are."""
    with autocast(precision):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    mask = batch["completion_mask"][:, 1:].bool()  # position t predicts token t + 1
    picked = F.log_softmax(logits[:, :-1][mask].float(), dim=-1)
    token_logps = picked.gather(-1, batch["input_ids"][:, 1:][mask].unsqueeze(-1)).squeeze(-1)
    rows = torch.arange(mask.size(0)).unsqueeze(1).expand_as(mask)[mask]
    return torch.zeros(mask.size(0)).index_add_(0, rows, token_logps), mask.sum(1)


@torch.no_grad()
def response_logps(model, examples: list, batch_size: int, precision: str) -> tuple[torch.Tensor, ...]:
    """(chosen, rejected, chosen_tokens, rejected_tokens), each [n], of DpoExample pairs: summed log-probs of
    each response's tokens given the prompt, and the response lengths. Padding and prompt positions are not
    counted."""
    was_training = model.training
    model.eval()
    columns: list[list[torch.Tensor]] = [[], [], [], []]
    for i in range(0, len(examples), batch_size):
        summed, counts = _summed_logps(model, collate_pairs(examples[i : i + batch_size]), precision)
        for column, part in zip(columns, (*summed.chunk(2), *counts.chunk(2)), strict=True):
            column.append(part)  # the batch is [chosen..., rejected...]
    model.train(was_training)
    return tuple(torch.cat(c) for c in columns)


@torch.no_grad()
def completion_logps(model, sequences: list[tuple[list[int], list[int]]], batch_size: int,
                     precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs, token counts), each [n], of each (prompt ids, completion ids) row's completion."""
    was_training = model.training
    model.eval()
    parts = [_summed_logps(model, _collate_completions(sequences[i : i + batch_size]), precision)
             for i in range(0, len(sequences), batch_size)]
    model.train(was_training)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@dataclass
class Counter:
    """Real (attention-mask) tokens and examples of the batches training consumed (counted in training_step: the
    dataloader looks one batch ahead, so counting in the collator would overcount)."""

    tokens: int = 0
    pairs: int = 0


TOTALS = "step_totals.json"  # beside each Trainer checkpoint: the run's tokens, pairs and train seconds so far


def totals_before(resumed_from: str | None, **zero) -> dict:
    """The totals the checkpoint a resumed run starts from kept (`zero` for a fresh run, or a checkpoint of an
    older version, which kept none)."""
    path = Path(resumed_from) / TOTALS if resumed_from else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else dict(zero)


def save_totals(args, state, totals: dict) -> None:
    """Write `totals` into the checkpoint the Trainer just saved (call from on_save, before GuardCallback's)."""
    path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
    if path.is_dir() and args.should_save:
        (path / TOTALS).write_text(json.dumps(totals))


class StepStats(TrainerCallback):
    """Real tokens, pairs and seconds of each optimizer step (batches are fetched after the previous step
    ended), and the periodic evaluation (training.eval_steps) with the stage's own metrics. Each checkpoint
    keeps the run's totals so far (`before`: those of the checkpoint a resumed run started from), so a resumed
    run's tokens and tokens/s count every process, not only the last."""

    def __init__(self, counter: Counter, evaluate: Callable[[], dict] | None, eval_steps: int | None,
                 metric_log: hf_bridge.MetricLogCallback, on_eval: Callable[[int, dict], None] | None) -> None:
        self.counter, self.evaluate, self.eval_steps = counter, evaluate, eval_steps
        self.metric_log, self.on_eval = metric_log, on_eval
        self.steps: dict[int, dict] = {}
        self.evals: list[dict] = []
        self.before = {"tokens": 0, "pairs": 0, "seconds": 0.0}
        self._mark = (time.perf_counter(), 0, 0)

    def totals(self) -> dict:
        """The run's tokens, pairs and train seconds: earlier processes' and this one's."""
        before = self.before
        return {"tokens": before["tokens"] + self.counter.tokens, "pairs": before["pairs"] + self.counter.pairs,
                "seconds": before["seconds"] + sum(s["seconds"] for s in self.steps.values())}

    def on_save(self, args, state, control, **kwargs):  # before GuardCallback's (it writes the manifest)
        save_totals(args, state, self.totals())

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark = (time.perf_counter(), self.counter.tokens, self.counter.pairs)

    def on_step_end(self, args, state, control, **kwargs):
        started, tokens, pairs = self._mark
        self.steps[state.global_step] = {"tokens": self.counter.tokens - tokens, "pairs": self.counter.pairs - pairs,
                                         "seconds": time.perf_counter() - started}
        if self.evaluate and self.eval_steps and state.global_step % self.eval_steps == 0:
            result = self.evaluate()
            self.evals.append({"step": state.global_step, **result})
            for key, value in result.items():
                if self.metric_log.writer is not None and isinstance(value, (int, float)):
                    self.metric_log.writer.add_scalar(f"eval/{key}", value, state.global_step)
            if self.on_eval:
                self.on_eval(state.global_step, result)
        self._mark = (time.perf_counter(), self.counter.tokens, self.counter.pairs)  # evaluation is not training


@dataclass
class Trained:
    """What train_with_callbacks leaves for the stage: the trainer (its reference model), the guard (skipped
    steps) and the run's TrainResult (per-step history with real tokens / pairs / seconds, periodic evals)."""

    trainer: object
    guard: hf_bridge.GuardCallback
    result: TrainResult


def train_with_callbacks(cfg: Config, out, build: Callable[[list[TrainerCallback], Counter], object],
                         evaluate: Callable[[], dict] | None, on_eval: Callable[[int, dict], None] | None,
                         resumed_from: str | None, log: Callable[[str], None], precision: str = "fp32") -> Trained:
    """Train a preference stage's TRL trainer, made by `build(callbacks, counter)`, with tuneforge's callbacks:
    per-step stats and periodic evaluation (`evaluate`, every training.eval_steps), the signal / non-finite
    guard and the metric log. A signal or too many non-finite steps raise here (guard.raise_if_stopped)."""
    counter = Counter()
    guard = hf_bridge.GuardCallback(cfg.training.max_bad_steps, run_guards(cfg))
    metric_log = hf_bridge.MetricLogCallback(cfg, out)
    stats = StepStats(counter, evaluate, cfg.training.eval_steps, metric_log, on_eval)
    stats.before = totals_before(resumed_from, **stats.before)
    trainer = build([stats, guard, metric_log], counter)  # the guard after the evaluation: a signal there stops
    if resumed_from:                                        # this step
        log(f"resuming from {resumed_from}")
    try:  # under bf16 autocast the frozen linear weights are held in bf16 while training (train/frozen.py)
        with frozen.held_for_trainer(trainer.model, cfg, precision, log, ddp.world_size()):
            trainer.train(resume_from_checkpoint=resumed_from)
    finally:
        guard.restore_signals()  # also when train() raises: on_train_end is skipped then
    guard.raise_if_stopped()
    history = [{**h, **stats.steps.get(h["step"], {})} for h in hf_bridge.history_of(trainer)]
    totals = stats.totals()
    result = TrainResult(trainer.state.global_step, history, stats.evals, totals["tokens"], totals["pairs"],
                         totals["seconds"], resumed_from)
    return Trained(trainer, guard, result)


def reference_of(model, trainer):
    """(context-manager factory, module): under the context, the module scores as the reference."""
    if trainer.ref_model is not None:
        return nullcontext, trainer.ref_model
    if "ref" in model.peft_config:
        from trl.trainer.utils import use_adapter

        return (lambda: use_adapter(model, "ref")), model
    return model.disable_adapter, model


def template_name(tokenizer, templated: bool) -> str | None:
    return ("alpaca" if tokenizer.chat_template == ALPACA_TEMPLATE else "chat") if templated else None
