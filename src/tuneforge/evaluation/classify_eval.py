"""`tuneforge eval` for a classify run: the base (the same untrained head the run started from) and the
tuned classifier on the same labelled rows: loss (mean cross-entropy of the gold label), accuracy and
macro-F1, per-class scores and confusion matrices; rows where the two predict differently.

    tuneforge eval runs/sentiment --data examples/data/sentiment/eval.csv
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import numpy as np

from tuneforge.data.classify import label_of, text_of
from tuneforge.data.load import load_records
from tuneforge.errors import ConfigError, DataError
from tuneforge.evaluation.request import Request, default_output, first_rows

CLASSIFY_METRICS = ("loss", "accuracy", "macro_f1")


def evaluate_classifier(req: Request) -> Path:
    """`req` (an evaluation.request.Request) targets a classifier run (stage_info's model_kind "classifier")."""
    from tuneforge.evaluation.cls_metrics import classification_metrics, plot_confusion
    from tuneforge.evaluation.eval_report import write_outputs
    from tuneforge.predict import load_classifier
    from tuneforge.runs import run_config, run_labels

    names = req.metrics or list(CLASSIFY_METRICS)
    unknown = [n for n in names if n not in CLASSIFY_METRICS]
    if unknown:
        raise ConfigError(f"--metrics: unknown {', '.join(unknown)}; known for classify: {', '.join(CLASSIFY_METRICS)}")
    cfg, labels = run_config(req.target), run_labels(req.target)
    d = cfg.data
    records, counted = first_rows(load_records(req.data), req.max_samples)
    texts = [text_of(r, d.text_field, "data.text_field") for r in records]
    pairs = [text_of(r, d.text_pair_field, "data.text_pair_field") for r in records] if d.text_pair_field else None
    gold = []
    for r in records:  # every label is checked before a model loads
        label = label_of(r, d.label_field)
        if label not in labels:
            raise DataError(f"{r.where}: label {label!r} is not one of the run's labels {labels}")
        gold.append(labels.index(label))
    output = Path(req.output) if req.output else default_output(req)

    results, predicted, details = {}, {}, {}
    for name, base in (("base", True), ("tuned", False)):
        start = time.perf_counter()
        clf = load_classifier(req.target, base=base)
        probs = clf.predict_proba(texts, pairs, progress=True)
        predicted[name] = probs.argmax(-1).tolist()
        scores = classification_metrics(gold, predicted[name], labels)
        nll = -np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-12, None))
        results[name] = {"loss": float(nll.mean()), "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
        results[name] = {k: v for k, v in results[name].items() if k in names}
        results[name]["seconds"] = time.perf_counter() - start
        details[name] = {"per_class": scores["per_class"], "confusion_matrix": scores["confusion_matrix"]}
        del clf
        gc.collect()

    rows = [{"text": t, **({"text_pair": pairs[i]} if pairs else {}), "label": labels[gold[i]],
             "base": labels[predicted["base"][i]], "tuned": labels[predicted["tuned"][i]]} for i, t in enumerate(texts)]
    with tempfile.TemporaryDirectory() as tmp:
        plot_confusion({n: details[n]["confusion_matrix"] for n in details}, labels, Path(tmp) / "confusion.png")
        confusion = (Path(tmp) / "confusion.png").read_bytes()
    summary = {"kind": "run", "run": req.target, "base_model": cfg.model, "method": cfg.method.name,
               "target": req.target, "stage": cfg.stage, "data": req.data, **counted, "labels": labels,
               "metrics": names, "precision": cfg.training.precision, "models": results, "details": details}
    write_outputs(output, summary, rows, {"confusion.png": confusion})
    return output
