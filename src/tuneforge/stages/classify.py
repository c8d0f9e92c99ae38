"""Sequence classification: a text (or a text pair) to a label, for encoders (BERT-like, pooled [CLS])
and decoders (the last token) alike. The new head trains with every method; the label mapping is saved
with the run (labels.json). Metrics before (untrained head) and after: accuracy, macro-F1, per-class
precision/recall, confusion matrix.

    tuneforge train examples/classify.yaml
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tuneforge.config.load import dump_config
from tuneforge.config.schema import Config
from tuneforge.data.classify import (
    ClsBatch,
    ClsExample,
    class_weights,
    collate_cls,
    label_set,
    load_cls_examples,
)
from tuneforge.data.dataset import load_train_eval_records
from tuneforge.evaluation.cls_metrics import classification_metrics, majority_baseline, plot_confusion
from tuneforge.fsutil import write_json_atomic, write_text_atomic
from tuneforge.methods import METHODS, MethodContext, count_params
from tuneforge.models import load_model, load_tokenizer, resolve_model
from tuneforge.report.write import write_report
from tuneforge.stages.lm import _save_model, check_config, cost_metrics, prepare_output_dir_once, start_ranks
from tuneforge.train import distributed as ddp
from tuneforge.train.loop import Objective, train
from tuneforge.train.precision import autocast, resolve_precision

HEADS = ("classifier", "score")  # the new head's module name in transformers' *ForSequenceClassification


def load_base_classifier(cfg: Config, labels: list[str]):
    """The base with a freshly initialised head; seeded, so `predict --base` sees the head the run started from."""
    torch.manual_seed(cfg.seed)
    return load_model(cfg.model, cfg.trust_remote_code, labels=labels)


def pads_left(tokenizer) -> bool:
    """Encoders pool a leading [CLS] token (pad right); decoders pool the last token (pad left)."""
    return tokenizer.cls_token_id is None


def forward_logits(model, batch: ClsBatch) -> torch.Tensor:
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if batch.token_type_ids is not None and hasattr(model.config, "type_vocab_size"):  # BERT-like only
        kwargs["token_type_ids"] = batch.token_type_ids
    return model(**kwargs).logits.float()


@torch.no_grad()
def predict_ids(model, examples: list[ClsExample], pad_id: int, left: bool, batch_size: int,
                precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n, k], labels [n]) in the order of `examples`."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for i in range(0, len(examples), batch_size):
        batch = collate_cls(examples[i : i + batch_size], pad_id, left)
        with autocast(precision):
            logits.append(forward_logits(model, batch))
        labels.append(batch.labels)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def apply_method_with_head(model, cfg: Config):
    """Apply the configured method to a base with a new head (classify, reward); the head always trains."""
    heads = tuple(name for name, _ in model.named_children() if name in HEADS)
    ctx = MethodContext(model_path=resolve_model(cfg.model), task_type="SEQ_CLS",
                        gradient_checkpointing=cfg.training.gradient_checkpointing, head_modules=heads)
    return METHODS[cfg.method.name].apply(model, cfg.method, ctx)


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
    wall_start = time.perf_counter()
    log = start_ranks(log)
    check_config(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    train_records, eval_records = load_train_eval_records(cfg, log)
    labels = label_set(cfg, train_records)
    train_examples, train_stats = load_cls_examples(cfg, tokenizer, train_records, labels)
    eval_examples, eval_stats = (load_cls_examples(cfg, tokenizer, eval_records[: cfg.eval.max_samples], labels)
                                 if eval_records else ([], None))
    weights = class_weights(cfg, labels, train_stats.label_counts)
    data_stats = {"train": train_stats.summary(), **({"eval": eval_stats.summary()} if eval_stats else {})}
    log(f"data: {len(train_examples)} train / {len(eval_examples)} eval samples, labels {train_stats.label_counts}")

    out = prepare_output_dir_once(cfg)  # nothing is written before every input above checked out
    if ddp.is_main():
        write_json_atomic(out / "labels.json", {"labels": labels, "text_field": cfg.data.text_field,
                                                "text_pair_field": cfg.data.text_pair_field,
                                                "label_field": cfg.data.label_field})
    random.seed(cfg.seed)
    precision = resolve_precision(cfg.training.precision)
    method = METHODS[cfg.method.name]
    model = load_base_classifier(cfg, labels)
    objective = cls_objective(cfg, tokenizer, labels, weights, precision)

    before_file = out / "eval_before.json"  # computed once, so a resumed run reports the same base
    if not ddp.is_main():
        eval_before = {}
    elif cfg.eval.before and eval_examples and before_file.is_file():
        eval_before = json.loads(before_file.read_text())["metrics"]
    elif cfg.eval.before and eval_examples:
        log("evaluating the base model (untrained head) ...")
        eval_before = objective.evaluate(model, eval_examples)
        write_json_atomic(before_file, {"metrics": eval_before})
    else:
        eval_before = {}
    model = apply_method_with_head(model, cfg)
    trainable, total = count_params(model)
    log(f"method {cfg.method.name}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")

    result = train(model, train_examples, eval_examples, cfg, out, precision, log=log, objective=objective,
                   on_eval=on_eval)
    if not ddp.is_main():
        ddp.shutdown()  # waits at a barrier until rank 0 has written everything
        return out
    eval_after = objective.evaluate(model, eval_examples) if eval_examples else {}
    _save_model(model, tokenizer, out, method)
    write_text_atomic(out / "train_log.jsonl", "".join(json.dumps(h) + "\n" for h in result.history))
    baseline = majority_baseline(train_stats.label_counts, [e.label for e in eval_examples], labels)
    metrics = {
        "model": cfg.model, "stage": cfg.stage, "method": cfg.method.name, "labels": labels,
        "eval_before": eval_before or None,
        "eval_after": eval_after,
        "baselines": {"majority_accuracy": baseline},
        "train": cost_metrics(result, wall_start, model, trainable, total, precision, "samples"),
        "evals": result.evals,
        "data": data_stats,
    }
    extra = ""
    if eval_after:
        matrices = ({"base (untrained head)": eval_before["confusion_matrix"]} if eval_before else {}) | {
            "tuned": eval_after["confusion_matrix"]}
        plot_confusion(matrices, labels, out / "confusion.png")
        extra = _section(eval_before, eval_after, labels, baseline)
    write_report(out, metrics, [], result.history, result.evals, dump_config(cfg), extra=extra)
    ddp.shutdown()
    return out
