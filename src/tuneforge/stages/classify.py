"""Sequence classification: a text (or a text pair) to a label, for encoders (BERT-like, pooled [CLS])
and decoders (the last token) alike. The new head trains with every method; the label mapping is saved
with the run (labels.json). Metrics before (untrained head) and after: accuracy, macro-F1, per-class
precision/recall, confusion matrix.

    tuneforge train examples/classify.yaml
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import tuneforge.stages.skeleton as skeleton
from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsBatch, ClsExample, class_weights, collate_cls
from tuneforge.evaluation.cls_metrics import classification_metrics, majority_baseline, plot_confusion
from tuneforge.fsutil import write_json_atomic
from tuneforge.models.classifier import forward_logits, pads_left, predict_ids
from tuneforge.train.loop import Objective, train


def cls_objective(cfg: Config, tokenizer, labels: list[str], weights: torch.Tensor | None, precision: str) -> Objective:
    pad_id, left, bs = tokenizer.pad_token_id, pads_left(tokenizer), cfg.training.batch_size

    def loss_sum(model, batch: ClsBatch) -> torch.Tensor:
        return F.cross_entropy(forward_logits(model, batch), batch.labels, weight=weights, reduction="sum")

    def evaluate(model, examples: list[ClsExample]) -> dict:
        logits, y = predict_ids(model, examples, pad_id, left, bs, precision)
        loss = float(F.cross_entropy(logits, y, weight=weights, reduction="mean"))
        return {"loss": loss, **classification_metrics(y.tolist(), logits.argmax(-1).tolist(), labels)}

    return Objective(collate=lambda examples: [collate_cls(examples, pad_id, left)], loss_sum=loss_sum,
                     evaluate=evaluate)


def _section(before: dict, after: dict, labels: list[str], baseline: float) -> str:
    lines = ["## Classification", "", f"Majority-class baseline accuracy: {baseline:.4f}", "",
             "![confusion matrices](confusion.png)", "",
             "| label | support | precision (base -> tuned) | recall (base -> tuned) | F1 (base -> tuned) |",
             "|---|---|---|---|---|"]
    for label in labels:
        b, a = (before.get("per_class") or {}).get(label, {}), after["per_class"][label]
        cells = [f"{b.get(k, float('nan')):.3f} -> {a[k]:.3f}" for k in ("precision", "recall", "f1")]
        lines.append(f"| {label} | {a['support']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cfg: Config, log: Callable[[str], None] = print, *, on_eval: Callable[[int, dict], None] | None = None) -> Path:
    run = skeleton.begin(cfg, log)
    data = skeleton.load_data(run)
    labels, train_stats = data.labels, data.train_stats
    weights = class_weights(cfg, labels, train_stats.label_counts)
    run.log(f"labels {train_stats.label_counts}")

    out = skeleton.open_output(run)
    if run.main:
        write_json_atomic(out / "labels.json", {"labels": labels, "text_field": cfg.data.text_field,
                                                "text_pair_field": cfg.data.text_pair_field,
                                                "label_field": cfg.data.label_field})
    model = skeleton.load_base(run, labels)
    objective = cls_objective(cfg, run.tokenizer, labels, weights, run.precision)
    before, _ = skeleton.eval_before(run, lambda: (objective.evaluate(model, data.eval), {})) if data.eval else ({}, {})
    model, counts = skeleton.apply_method(run, model)

    result = train(model, data.train, data.eval, cfg, out, run.precision, log=run.log, objective=objective,
                   on_eval=on_eval)
    after = objective.evaluate(model, data.eval) if data.eval and run.main else {}
    baseline = majority_baseline(train_stats.label_counts, [e.label for e in data.eval], labels)
    section = ""
    if after:
        matrices = ({"base (untrained head)": before["confusion_matrix"]} if before else {}) | {
            "tuned": after["confusion_matrix"]}
        plot_confusion(matrices, labels, out / "confusion.png")
        section = _section(before, after, labels, baseline)
    outcome = skeleton.Outcome(result, counts, before, after, data.summary, section=section,
                               extra={"labels": labels, "baselines": {"majority_accuracy": baseline}})
    return skeleton.finish(run, model, outcome)
