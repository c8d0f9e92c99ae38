"""Classification data: a text (optionally a text pair) and a label per record, labels mapped to ids.

    labels = label_set(cfg, train_records)
    examples, stats = load_cls_examples(cfg, tokenizer, records, labels)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import torch

from tuneforge.config.schema import Config
from tuneforge.data.fields import Issue, label_field, string_field
from tuneforge.data.load import Record
from tuneforge.data.overlength import over_length
from tuneforge.errors import ConfigError, DataError


@dataclass(frozen=True)
class ClsExample:
    input_ids: list[int]
    token_type_ids: list[int] | None
    label: int


@dataclass
class ClsBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    labels: torch.Tensor
    n_tokens: int  # real (unpadded) tokens
    n_supervised: int  # samples: the loss is averaged per sample over the optimizer step


@dataclass
class ClsStats:
    records: int = 0
    examples: int = 0
    truncated: int = 0
    dropped_overlength: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # the label order ids refer to (build eval sets with it)

    def summary(self) -> dict:
        return {"records": self.records, "examples": self.examples, "truncated": self.truncated,
                "dropped_overlength": self.dropped_overlength, "dropped_no_supervised": 0, "format": "classify",
                "label_counts": self.label_counts,
                "length_mean": round(sum(self.lengths) / len(self.lengths), 1) if self.lengths else 0}


def label_of(record: Record, field_name: str) -> str:
    issues: list[Issue] = []
    label = label_field(record.data, field_name, issues)
    if issues:
        raise DataError(f"{record.where}: {issues[0].message} (key 'data.label_field')")
    assert label is not None
    return label


def text_of(record: Record, field_name: str, key: str) -> str:
    """A required text column (the classify validator's check); the message names the config key and the
    columns the record has."""
    issues: list[Issue] = []
    text = string_field(record.data, field_name, issues)
    if issues:
        found = ", ".join(sorted(record.data)) or "none"
        raise DataError(f"{record.where}: {issues[0].message} (key '{key}'); columns found: {found}")
    assert text is not None
    return text


def label_set(cfg: Config, records: list[Record]) -> list[str]:
    """The configured label order, or the sorted labels of the training records (numerically if all ints)."""
    return label_order(cfg, {label_of(r, cfg.data.label_field) for r in records})


def label_order(cfg: Config, seen: set[str]) -> list[str]:
    """The configured label order, or the sorted labels `seen` in training (numerically if all ints)."""
    if cfg.data.labels:
        if len(set(cfg.data.labels)) != len(cfg.data.labels):
            raise ConfigError(f"key 'data.labels': duplicate labels in {cfg.data.labels}")
        return list(cfg.data.labels)
    if len(seen) < 2:
        raise DataError(f"{cfg.data.train}: classification needs at least two labels, found {sorted(seen)}")
    # ASCII integers only: str.isdigit() also accepts "²" and "①", which int() refuses
    numeric = all(re.fullmatch(r"-?[0-9]+", s) for s in seen)
    return sorted(seen, key=int) if numeric else sorted(seen)


def cls_record(cfg: Config, tokenizer, record: Record, stats: ClsStats
               ) -> tuple[str, list[int] | None, list[int] | None]:
    """(label, input ids, token type ids) of one record as classify trains on it, ids None when dropped over
    length (counted in `stats`); the one builder of the in-memory and the cached (data.stage_cache) paths."""
    stats.records += 1
    text = text_of(record, cfg.data.text_field, "data.text_field")
    pair = text_of(record, cfg.data.text_pair_field, "data.text_pair_field") if cfg.data.text_pair_field else None
    label = label_of(record, cfg.data.label_field)
    enc = tokenizer(text, pair, truncation=False)
    action = over_length(len(enc["input_ids"]), cfg, record.where, "text")
    if action == "drop":
        stats.dropped_overlength += 1
        return label, None, None
    if action == "truncate":
        enc = tokenizer(text, pair, truncation=True, max_length=cfg.training.max_length)
        stats.truncated += 1
    stats.lengths.append(len(enc["input_ids"]))
    return label, enc["input_ids"], enc.get("token_type_ids")


def unknown_label(where: str, label: str, labels: list[str]) -> DataError:
    return DataError(f"{where}: label {label!r} is not one of the run's labels {labels}")


def load_cls_examples(cfg: Config, tokenizer, records: list[Record],
                      labels: list[str]) -> tuple[list[ClsExample], ClsStats]:
    """Tokenize every record; a label outside `labels` is an error naming the record and the known labels."""
    index = {label: i for i, label in enumerate(labels)}
    stats, examples = ClsStats(labels=list(labels)), []
    counts: Counter[str] = Counter()
    for record in records:
        label, ids, types = cls_record(cfg, tokenizer, record, stats)
        if label not in index:
            raise unknown_label(record.where, label, labels)
        if ids is None:
            continue
        counts[label] += 1
        examples.append(ClsExample(ids, types, index[label]))
    if not examples:
        raise DataError(f"{records[0].where.rsplit(':', 1)[0]}: no usable samples (all dropped as over length)")
    stats.examples = len(examples)
    stats.label_counts = {label: counts[label] for label in labels}
    return examples, stats


def class_weights(cfg: Config, labels: list[str], label_counts: dict[str, int]) -> torch.Tensor | None:
    setting = cfg.training.class_weights
    if setting == "none":
        return None
    if setting == "balanced":  # scikit-learn's definition: n / (k * count)
        n = sum(label_counts.values())
        return torch.tensor([n / (len(labels) * max(label_counts.get(label, 0), 1)) for label in labels])
    unknown = sorted(set(setting) - set(labels))
    if unknown:
        raise ConfigError(f"key 'training.class_weights': unknown labels {unknown}; labels are {labels}")
    if any(w <= 0 for w in setting.values()):
        raise ConfigError("key 'training.class_weights': weights must be > 0")
    return torch.tensor([float(setting.get(label, 1.0)) for label in labels])


def collate_cls(examples: list[ClsExample], pad_id: int, left: bool = False) -> ClsBatch:
    """Padded rows. Encoders pool the first ([CLS]) token: pad on the right. Decoders pool the last token:
    pad on the left, so the last position is real even when peft's prompt tuning hides input_ids from the
    model (transformers then pools position -1); rotary positions are relative, so the shift is harmless."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    types = torch.zeros((len(examples), width), dtype=torch.long) if examples[0].token_type_ids is not None else None
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        cols = slice(width - n, width) if left else slice(0, n)
        ids[row, cols] = torch.tensor(e.input_ids)
        mask[row, cols] = 1
        if types is not None and e.token_type_ids is not None:
            types[row, cols] = torch.tensor(e.token_type_ids)
    labels = torch.tensor([e.label for e in examples])
    return ClsBatch(ids, mask, types, labels, int(mask.sum()), len(examples))
