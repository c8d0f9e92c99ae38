"""Every stage's examples through the token cache (data.token_cache): besides sft / pretrain samples
(token_cache.LmKind), classify texts, reward pairs (scored_pairs), dpo / orpo / simpo / cpo pairs (dpo_pairs),
kto rows and ppo / grpo prompts (data.example_kinds) are built once per file in the same streaming, validating
pass, under the same key rules, lock and reuse log line, then read lazily by index. Eval files go through the cache too,
and data.eval_split splits one cache by record: each part's counts come from the per-record counts.

    split = load_cached_split(cfg, tokenizer, log)     # train / eval examples (Sequences), stats, eval records
    split = load_cached_eval(cfg, tokenizer, path, log)   # one eval file of several (its eval part only)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tuneforge.config.schema import Config
from tuneforge.data.dataset import DataStats, held_out
from tuneforge.data.example_kinds import KINDS, ClassifyKind
from tuneforge.data.load import Record
from tuneforge.data.token_cache import COUNTERS, CachedExamples, LmKind, open_cache, records_at
from tuneforge.data.token_store import TokenReader
from tuneforge.errors import DataError
from tuneforge.stage_info import stage_info


def _restore(cls, meta: dict, reader: TokenReader, records: np.ndarray | None):
    """The stats of a build, or of the part of it made of `records` (their own per-record counts)."""
    stats = cls(**meta["stats"])
    if records is not None:
        counts = np.asarray(np.load(reader.dir / "record_counts.npy", mmap_mode="r")[records]).sum(axis=0)
        for name, value in zip(COUNTERS, counts.tolist(), strict=True):
            if hasattr(stats, name):
                setattr(stats, name, int(value))
        stats.records = len(records)
    return stats


def _part(kind, path, reader: TokenReader, meta: dict, records: np.ndarray | None,
          labels: list[str] | None) -> tuple[CachedExamples, object]:
    """The examples of `records` (None: every record) and their stats."""
    index = np.arange(len(reader)) if records is None else np.flatnonzero(np.isin(reader.records, records))
    stats = _restore(kind.stats_class if not isinstance(kind, LmKind) else DataStats, meta, reader, records)
    if isinstance(kind, ClassifyKind):
        stats.labels = labels if labels is not None else kind.labels(reader, records)
        remap = kind.check(reader, records, stats.labels)
        label_ids = remap[np.asarray(reader.scalar("label"))[index]]
        stats.label_counts = {label: int((label_ids == i).sum()) for i, label in enumerate(stats.labels)}
        examples = CachedExamples(reader, index, kind.reader_for(remap))
    else:
        examples = CachedExamples(reader, index, kind.read)
    if not len(index):
        raise kind.empty(str(path), stats) if not isinstance(kind, LmKind) else DataError(
            f"{path}: no usable samples: {stats.records} records, {stats.dropped_overlength} over max_length, "
            f"{stats.dropped_no_supervised} with no supervised tokens")
    if isinstance(kind, LmKind):
        stats.lengths = reader.lengths()[index]
        stats.tokens = int(stats.lengths.sum())
        stats.supervised_tokens = int(examples.supervised().sum())
        stats.examples = len(index)
    else:
        kind.finish(stats, len(index))
        if hasattr(stats, "lengths"):
            stats.lengths = kind.lengths(reader, index)
        if hasattr(kind, "part_stats"):
            kind.part_stats(stats, reader, index)
    return examples, stats


@dataclass
class CachedSplit:
    train: CachedExamples
    train_stats: object
    eval: CachedExamples | list = field(default_factory=list)
    eval_stats: object = None
    eval_available: int = 0  # eval records before eval.max_samples
    eval_records: list[Record] = field(default_factory=list)  # sft / pretrain: the eval records (generation items)


def load_cached_split(cfg: Config, tokenizer, log: Callable[[str], None] = print) -> CachedSplit:
    """Train and eval examples of a run from the token caches of data.train and data.eval (one file each),
    eval held out of train by data.eval_split when there is no eval file, eval cut to eval.max_samples."""
    kind = KINDS[stage_info(cfg.stage).examples](cfg, tokenizer)
    reader, meta = open_cache(cfg, tokenizer, cfg.data.train, log, kind)
    n = meta["records"]
    held = None
    if not cfg.data.eval and cfg.data.eval_split > 0:
        held = np.array(sorted(held_out(n, cfg.data.eval_split, cfg.seed)), dtype=np.int64)
    train_records = None if held is None else np.setdiff1d(np.arange(n), held)
    train, train_stats = _part(kind, cfg.data.train, reader, meta, train_records, None)
    split = CachedSplit(train, train_stats)
    labels = getattr(train_stats, "labels", None)
    if isinstance(cfg.data.eval, str):
        eval_path = cfg.data.eval
        reader, meta = open_cache(cfg, tokenizer, eval_path, log, kind)
        available = np.arange(meta["records"])
    elif held is not None:
        eval_path, available = cfg.data.train, held
    else:
        return split
    _eval_part(split, cfg, kind, eval_path, reader, meta, available, labels)
    return split


def _eval_part(split: CachedSplit, cfg: Config, kind, path, reader: TokenReader, meta: dict, available: np.ndarray,
               labels: list[str] | None) -> None:
    """split.eval*: the examples of the `available` eval records, cut to eval.max_samples."""
    split.eval_available = len(available)
    if not len(available):
        raise DataError(f"{path}: no records to build {cfg.stage} examples from")
    split.eval, split.eval_stats = _part(kind, path, reader, meta, available[: cfg.eval.max_samples], labels)
    if isinstance(kind, LmKind):
        split.eval_records = records_at(path, available.tolist())


def load_cached_eval(cfg: Config, tokenizer, path: str, log: Callable[[str], None] = print) -> CachedSplit:
    """One eval file of several (data.eval as a list: sft / pretrain) from its own token cache, as the eval part
    of a CachedSplit (no train part): its examples cut to eval.max_samples, stats, records."""
    kind = KINDS[stage_info(cfg.stage).examples](cfg, tokenizer)
    reader, meta = open_cache(cfg, tokenizer, path, log, kind)
    split = CachedSplit(train=[], train_stats=None)
    _eval_part(split, cfg, kind, path, reader, meta, np.arange(meta["records"]), None)
    return split
