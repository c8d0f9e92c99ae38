"""Read a stage's data once, checked (every unusable record reported at once, exit 2), and turn sft /
pretrain records into tokenized samples, applying the over-length policy and counting what was truncated,
dropped or unsupervised.

    train_records, eval_records = load_train_eval_records(cfg, log)   # what every stage starts from
    examples, stats = load_examples(cfg, tokenizer, cfg.data.train, records)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from tuneforge.config.schema import Config
from tuneforge.data.formats import detect_format, to_messages, to_text
from tuneforge.data.load import BadLine, Item, Record, iter_records, load_records
from tuneforge.data.overlength import over_length
from tuneforge.data.records import fields_of
from tuneforge.data.templates import Example, build_pretrain_examples, build_sft_example
from tuneforge.data.tools import row_tools
from tuneforge.datatools.check import check_records
from tuneforge.errors import DataError
from tuneforge.stage_info import stage_info

__all__ = ["DataStats", "load_checked_records", "load_examples", "load_train_eval_records", "over_length",
           "record_examples", "records_to_examples", "split_records"]


@dataclass
class DataStats:
    path: str
    format: str
    records: int = 0
    examples: int = 0
    truncated: int = 0
    dropped_overlength: int = 0
    dropped_no_supervised: int = 0
    split_chunks: int = 0
    corpus_tokens: int = 0  # every token the records tokenized to, before the over-length policy
    tokens: int = 0  # the tokens of the examples kept (what training can use)
    supervised_tokens: int = 0
    lengths: list[int] | np.ndarray = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        lengths = np.sort(np.asarray(self.lengths, dtype=np.int64))
        d = {k: v for k, v in asdict(replace(self, lengths=[])).items() if k != "lengths"}
        if self.corpus_tokens:
            d["corpus_tokens_used"] = round(self.tokens / self.corpus_tokens, 4)
        if len(lengths):
            d["length_mean"] = round(float(lengths.mean()), 1)
            d["length_max"] = int(lengths[-1])
            d["length_p95"] = int(lengths[int(0.95 * (len(lengths) - 1))])
        return d


def _fit(example: Example, cfg: Config, where: str, stats: DataStats) -> Example | None:
    action = over_length(len(example.input_ids), cfg, where)
    if action == "fits":
        return example
    if action == "drop":
        stats.dropped_overlength += 1
        return None
    stats.truncated += 1
    max_length = cfg.training.max_length
    return Example(example.input_ids[:max_length], example.labels[:max_length])


def record_examples(cfg: Config, tokenizer, record: Record, stats: DataStats, formats: set[str]) -> list[Example]:
    """One record's samples as training sees them (over-length policy applied, unsupervised ones dropped),
    counted in `stats`; the one builder of the in-memory and the cached (data.token_cache) paths."""
    max_length, policy = cfg.training.max_length, cfg.training.overlength
    stats.records += 1
    if stage_info(cfg.stage).records == "pretrain":
        chunks = build_pretrain_examples(
            tokenizer, to_text(record, cfg.data.text_field), max_length, split=policy == "split",
            special_tokens_in_text=cfg.data.special_tokens_in_text,
        )
        stats.split_chunks += max(0, len(chunks) - 1)
    else:
        fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(record, "sft")
        formats.add(fmt)
        chunks = [build_sft_example(tokenizer, to_messages(record, fmt, cfg.data.system_prompt), record.where,
                                    cfg.data.special_tokens_in_text, row_tools(record.data))]
    out: list[Example] = []
    for example in chunks:
        stats.corpus_tokens += len(example.input_ids)
        fitted = _fit(example, cfg, record.where, stats)
        if fitted is None:
            continue
        if fitted.n_supervised == 0:  # e.g. the prompt alone fills max_length
            stats.dropped_no_supervised += 1
            continue
        out.append(fitted)
        stats.tokens += len(fitted.input_ids)
        stats.supervised_tokens += fitted.n_supervised
    return out


def records_to_examples(cfg: Config, tokenizer, records: list[Record], stats: DataStats) -> list[Example]:
    out: list[Example] = []
    formats: set[str] = set()
    for record in records:
        for example in record_examples(cfg, tokenizer, record, stats, formats):
            out.append(example)
            stats.lengths.append(len(example.input_ids))
    stats.examples = len(out)
    stats.format = "+".join(sorted(formats)) or "text"
    return out


def load_examples(cfg: Config, tokenizer, path: str | Path,
                  records: list[Record] | None = None) -> tuple[list[Example], DataStats]:
    records = records if records is not None else load_records(path)
    if stage_info(cfg.stage).records == "pretrain":
        detect_format(records[0], "pretrain", cfg.data.text_field)  # names the missing field up front
    stats = DataStats(path=str(path), format=cfg.data.format)
    examples = records_to_examples(cfg, tokenizer, records, stats)
    if not examples:
        raise DataError(
            f"{path}: no usable samples: {stats.records} records, {stats.dropped_overlength} over max_length, "
            f"{stats.dropped_no_supervised} with no supervised tokens"
        )
    return examples, stats


def held_out(n_records: int, share: float, seed: int) -> list[int]:
    """The positions of the records data.eval_split holds out (seeded; the cached path splits by them too)."""
    order = list(range(n_records))
    random.Random(seed).shuffle(order)
    return order[: max(1, int(round(share * n_records))) if share > 0 else 0]


def split_records(records: list[Record], share: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Deterministic hold-out split for when no eval file is given."""
    held = set(held_out(len(records), share, seed))
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def load_train_eval_records(cfg: Config, log=print) -> tuple[list[Record], list[Record]]:
    """Checked train and eval records; eval is held out of train (data.eval_split) when there is no eval file."""
    train_records = load_checked_records(cfg, cfg.data.train, log)  # every unusable record at once, exit 2
    eval_records = load_checked_records(cfg, cfg.data.eval, log) if cfg.data.eval else []
    if not eval_records and cfg.data.eval_split > 0:
        train_records, eval_records = split_records(train_records, cfg.data.eval_split, cfg.seed)
    return train_records, eval_records


def load_checked_records(cfg: Config, path: str | Path, log=print) -> list[Record]:
    """The records of `path`, read once: each goes through the validation `tuneforge data check --stage`
    runs (the stage's record kind, the config's fields) on its way into the list. Every unusable record is
    reported at once (DataError, exit 2) before anything is written; duplicates and other warnings are
    logged, not fatal."""
    records: list[Record] = []

    def kept(items) -> Iterator[Item]:
        for item in items:
            if not isinstance(item, BadLine):
                records.append(item)
            yield item

    check_stream(cfg, path, kept(iter_records(path)), log)
    return records


def check_stream(cfg: Config, path: str | Path, items: Iterator[Item], log=print) -> None:
    """Run every item of `items` through the stage's check (data.token_cache streams its build through it):
    every unusable record at once as a DataError, warnings logged."""
    report = check_records(items, cfg.stage, fields=fields_of(cfg), near_dup_threshold=None, path=path)
    same = report.findings.pop("chosen_equals_rejected", None)  # the preference builders count and drop these
    report.raise_for_errors()
    if same:
        log(f"data warning: {path}: {same.count} pairs with chosen == rejected are dropped; e.g. {same.examples[0]}")
    for line in report.warning_lines():
        log(f"data warning: {path}: {line}")
