"""Predict labels with a classify run: labels and probabilities per row, in the input's order.

    tuneforge predict runs/sentiment --input reviews.csv [--output predictions.csv] [--base]
    clf = load_classifier("runs/sentiment"); probs = clf.predict_proba(["great value"])
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsExample, label_of, text_of
from tuneforge.data.load import load_records
from tuneforge.errors import DataError, ModelError, UserError
from tuneforge.fsutil import write_text_atomic
from tuneforge.stage_info import STAGE_INFO, stage_info


@dataclass
class Classifier:
    model: torch.nn.Module
    tokenizer: object
    labels: list[str]
    cfg: Config

    def _examples(self, texts: list[str], pairs: list[str] | None) -> tuple[list[ClsExample], int]:
        truncated, out = 0, []
        for i, text in enumerate(texts):
            enc = self.tokenizer(text, pairs[i] if pairs else None, truncation=True,
                                 max_length=self.cfg.training.max_length, return_overflowing_tokens=False)
            full = len(self.tokenizer(text, pairs[i] if pairs else None)["input_ids"])
            truncated += full > len(enc["input_ids"])
            out.append(ClsExample(enc["input_ids"], enc.get("token_type_ids"), 0))
        return out, truncated

    def predict_proba(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 32,
                      progress: bool = False) -> np.ndarray:
        """[n, n_labels] probabilities. Rows are batched by length (less padding) and returned in input order."""
        from rich.progress import Progress

        from tuneforge.models.classifier import pads_left, predict_ids
        from tuneforge.train.precision import resolve_precision

        examples, truncated = self._examples(texts, pairs)
        if truncated:
            print(f"warning: {truncated} inputs truncated to training.max_length {self.cfg.training.max_length}",
                  file=sys.stderr)
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
        probs = np.zeros((len(examples), len(self.labels)), dtype=np.float32)
        precision = resolve_precision(self.cfg.training.precision)  # for the device select() chose
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("predict", total=len(order))
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                logits, _ = predict_ids(self.model, [examples[i] for i in idx], self.tokenizer.pad_token_id,
                                        pads_left(self.tokenizer), batch_size, precision)
                probs[idx] = torch.softmax(logits, -1).numpy()
                bar.advance(task, len(idx))
        return probs


WHAT_IT_MAKES = {"causal_lm": "generates text (use `tuneforge chat`, `serve` or `eval`)",
                 "scorer": "scores texts with one reward (name it in a ppo / grpo config's rewards)"}


def check_classifier(run_dir: str | Path, stage: str) -> None:
    """Refuse, before anything loads, a run whose model is not a classifier with labels."""
    kind = stage_info(stage).model_kind
    if kind != "classifier":
        classifiers = ", ".join(name for name, i in STAGE_INFO.items() if i.model_kind == "classifier")
        raise ModelError(f"{run_dir}: a {stage} run {WHAT_IT_MAKES[kind]}; predict needs a run of {classifiers}")


def load_classifier(run_dir: str | Path, base: bool = False) -> Classifier:
    """The run's tuned classifier, or (`base=True`) its base with the same untrained head it started from."""
    from tuneforge.models import load_tokenizer
    from tuneforge.models.classifier import load_base_classifier
    from tuneforge.runs import load_run, run_config, run_labels
    from tuneforge.train.kernel_cache import bound_kernel_caches

    cfg = run_config(run_dir)
    check_classifier(run_dir, cfg.stage)
    bound_kernel_caches(cfg.training.kernel_cache_entries)  # as training does, before the first bf16 matmul
    labels = run_labels(run_dir)
    if base:
        model, tokenizer = load_base_classifier(cfg, labels).eval(), load_tokenizer(cfg.model, cfg.trust_remote_code)
    else:
        model, tokenizer, cfg = load_run(run_dir)
    return Classifier(model, tokenizer, labels, cfg)


def _write(rows: list[dict], labels: list[str], output: str | None, kind: str) -> None:
    if kind == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if output:
        write_text_atomic(Path(output), text)
    else:
        sys.stdout.write(text)


def run_predict(run_dir: str, input_path: str, output: str | None, base: bool = False, batch_size: int = 32,
                device: str | None = None) -> dict:
    """Write predictions; returns a summary (rows, and accuracy when the input has known labels).
    `device`: --device, else the run's training.device (checked before the model loads)."""
    from tuneforge.device import for_command
    from tuneforge.models.chain import run_config

    where = for_command(device, run_config(run_dir).training.device)
    kind = "csv" if Path(output or input_path).suffix.lower() == ".csv" else "jsonl"
    if output and Path(output).resolve() == Path(input_path).resolve():
        raise UserError(f"--output {output}: refusing to overwrite the input file")
    clf = load_classifier(run_dir, base)
    if where.type != "cpu":
        clf.model.to(where)
    d = clf.cfg.data
    records = load_records(input_path)
    texts = [text_of(r, d.text_field, "data.text_field") for r in records]
    pairs = [text_of(r, d.text_pair_field, "data.text_pair_field") for r in records] if d.text_pair_field else None
    known = [label_of(r, d.label_field) if d.label_field in r.data else None for r in records]
    for record, label in zip(records, known, strict=True):
        if label is not None and label not in clf.labels:
            raise DataError(f"{record.where}: label {label!r} is not one of the run's labels {clf.labels}")
    probs = clf.predict_proba(texts, pairs, batch_size, progress=len(texts) > 4 * batch_size)
    rows = []
    for record, p in zip(records, probs, strict=True):
        predicted, by_label = clf.labels[int(p.argmax())], list(zip(clf.labels, p, strict=True))
        if kind == "csv":
            rows.append({**record.data, "predicted": predicted, **{f"prob_{lab}": f"{v:.6f}" for lab, v in by_label}})
        else:
            rows.append({**record.data, "predicted": predicted,
                         "probabilities": {lab: round(float(v), 6) for lab, v in by_label}})
    _write(rows, clf.labels, output, kind)
    scored = [(k, r["predicted"]) for k, r in zip(known, rows, strict=True) if k is not None]
    summary: dict = {"rows": len(rows)}
    if scored:
        summary["accuracy"] = sum(k == p for k, p in scored) / len(scored)
    return summary
