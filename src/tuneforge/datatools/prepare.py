"""`tuneforge data prepare`: normalise, drop broken and empty records, remove exact and near-duplicates,
scrub PII, convert the sft format, split train / validation (stratified by label for classify), and
write JSONL plus a data card saying what changed and why. Deterministic for a seed; the input file
is only read, and the output directory appears complete or not at all.

    tuneforge data prepare raw.jsonl --output data/clean --stage sft --to messages --val-ratio 0.1

Two passes keep memory bounded: the first writes transformed records to a temporary file and indexes
them for duplicates; the second copies the kept ones into train.jsonl / validation.jsonl.
"""

from __future__ import annotations

import json
import shutil
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data.load import BadLine, Record, iter_records, line_of, where_template
from tuneforge.data.records import DEFAULT_FIELDS, Fields, view_record
from tuneforge.datatools.dedup import DupIndex
from tuneforge.datatools.pii import PLACEHOLDERS, scrub
from tuneforge.datatools.transform import NotConvertible, convert, normalize_value, scrub_value
from tuneforge.errors import ConfigError
from tuneforge.fsutil import make_temp_dir, move_dir_contents, write_json_atomic, write_text_atomic
from tuneforge.stage_info import STAGE_INFO


@dataclass
class PrepareOptions:
    stage: str = "sft"
    to: str | None = None  # sft only: alpaca | prompt_completion | messages; None keeps each record's format
    dedup: bool = True
    near_dup_threshold: float | None = 0.85  # None: exact duplicates only
    num_perm: int = 32
    pii: bool = True
    val_ratio: float = 0.0
    seed: int = 0
    examples: int = 3  # per kind, in the data card
    fields: Fields = DEFAULT_FIELDS


@dataclass
class PrepareStats:
    read: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> records
    normalized: int = 0
    scrubbed_records: int = 0
    pii: Counter = field(default_factory=Counter)  # kind -> occurrences
    converted: int = 0
    written: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}  # asdict breaks Counters

    def example(self, kind: str, text: str, limit: int) -> None:
        shown = self.examples.setdefault(kind, [])
        if len(shown) < limit:
            shown.append(text)


def _snippet(value: Any, limit: int = 140) -> str:
    """What a card may show of a record: PII scrubbed, one line, truncated."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(scrub(text)[0].split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _transform(record: Record, opts: PrepareOptions, stats: PrepareStats) -> tuple[dict, Any] | None:
    """(output record, view) or None when the record is dropped (the reason is counted)."""
    data = normalize_value(record.data)
    if data != record.data:
        stats.normalized += 1
    if opts.pii:
        skip = {opts.fields.label, "role"}
        data, found = scrub_value(data, skip)
        if found:
            stats.scrubbed_records += 1
            stats.pii.update(found)
            stats.example("pii", f"{record.where}: {_snippet(data)}", opts.examples)
    view, issues = view_record(data, STAGE_INFO[opts.stage].records, opts.fields)
    if view is None:
        reason = issues[0].kind if issues else "invalid"
        stats.dropped[reason] += 1
        stats.example(reason, f"{record.where}: {issues[0].message if issues else reason}", opts.examples)
        return None
    if opts.to and view.fmt != opts.to:
        try:
            data = convert(data, view.fmt, opts.to)
        except NotConvertible as exc:
            stats.dropped["not_convertible"] += 1
            stats.example("not_convertible", f"{record.where}: {exc}", opts.examples)
            return None
        stats.converted += 1
    return data, view


def _split(labels: np.ndarray, keep: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Validation mask: per label group (one group when unlabelled), a seeded permutation, round(ratio * n)."""
    held = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(seed)
    for tag in np.unique(labels[keep]):
        members = np.flatnonzero(keep & (labels == tag))
        n = round(ratio * len(members))
        if ratio > 0 and n == 0 and len(members) >= 2:
            n = 1  # a label with at least two records appears in both splits
        held[rng.permutation(members)[:n]] = True
    return held


def _check_output(input_path: Path, output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ConfigError(f"--output {output}: not empty; pass --overwrite to replace its files")
        if input_path.resolve().parent == output.resolve():
            raise ConfigError(f"--output {output}: holds the input file {input_path.name}; choose another directory")


def prepare(path: str | Path, output: str | Path, opts: PrepareOptions, overwrite: bool = False,
            on_bytes: Callable[[int], None] | None = None) -> PrepareStats:
    path, output = Path(path), Path(output)
    if opts.stage not in STAGE_INFO:
        raise ConfigError(f"--stage {opts.stage!r}: expected one of {', '.join(STAGE_INFO)}")
    if opts.to and STAGE_INFO[opts.stage].records != "sft":
        raise ConfigError(f"--to converts sft formats; stage {opts.stage!r} has one format")
    if not 0 <= opts.val_ratio < 1:
        raise ConfigError(f"--val-ratio {opts.val_ratio}: expected a share in [0, 1)")
    items = iter_records(path, on_bytes)  # raises DataError (exit 2) before anything is written
    _check_output(path, output, overwrite)
    tmp = make_temp_dir(output.parent if output.parent != Path("") else Path("."), f".{output.name}.")
    try:
        stats = _run(items, tmp, opts)
        write_text_atomic(tmp / "card.md", render_card(path, opts, stats))
        write_json_atomic(tmp / "prepare.json", {"input": str(path), "options": _options(opts), **stats.to_dict()})
        move_dir_contents(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def _options(opts: PrepareOptions) -> dict:
    d = asdict(opts)
    d["fields"] = asdict(opts.fields)
    return d


def _run(items, tmp: Path, opts: PrepareOptions) -> PrepareStats:
    stats = PrepareStats()
    label_ids: dict[str | None, int] = {}
    labels, lines = array("i"), array("I")
    where_of = None
    scratch = tmp / ".all.jsonl"
    with DupIndex(opts.near_dup_threshold if opts.dedup else None, opts.num_perm) as index, \
            scratch.open("w", encoding="utf-8") as f:
        for item in items:
            stats.read += 1
            if isinstance(item, BadLine):
                stats.dropped[item.kind] += 1
                stats.example(item.kind, f"{item.where}: {item.message}", opts.examples)
                continue
            result = _transform(item, opts, stats)
            if result is None:
                continue
            data, view = result
            f.write(json.dumps(data, ensure_ascii=False) + "\n")
            index.add(view.key, view.text, label_ids.setdefault(view.label, len(label_ids)))
            labels.append(label_ids[view.label])
            lines.append(line_of(item.where))
            where_of = where_of or where_template(item.where)
        drop = np.zeros(index.n, dtype=bool)
        if opts.dedup and index.n:
            drop[_duplicates(index, opts, stats, lambda i: where_of(lines[i]))] = True
    label_arr = np.frombuffer(labels, dtype=np.int32) if index.n else np.empty(0, np.int32)
    held = _split(label_arr, ~drop, opts.val_ratio, opts.seed)
    _write_splits(tmp, scratch, drop, held, opts.val_ratio > 0, stats)
    if STAGE_INFO[opts.stage].records == "classify":
        names = {v: k for k, v in label_ids.items()}
        for split, mask in (("train", ~drop & ~held), ("validation", held)):
            ids, counts = np.unique(label_arr[mask], return_counts=True)
            pairs = zip(ids.tolist(), counts.tolist(), strict=True)
            stats.labels[split] = dict(sorted((str(names[i]), int(c)) for i, c in pairs))
    return stats


def _duplicates(index: DupIndex, opts: PrepareOptions, stats: PrepareStats, where: Callable[[int], str]) -> list[int]:
    exact = index.exact_duplicates()
    near = index.near_duplicates(exact) if opts.near_dup_threshold is not None else {}
    for j, i in sorted(exact.items())[: opts.examples]:
        stats.example("duplicate", f"{where(j)}: same as {where(i)}", opts.examples)
    for j, (i, sim) in sorted(near.items())[: opts.examples]:
        stats.example("near_duplicate", f"{where(j)}: like {where(i)} (Jaccard {sim:.2f})", opts.examples)
    stats.dropped["duplicate"] += len(exact)
    stats.dropped["near_duplicate"] += len(near)
    return [*exact, *near]


def _write_splits(tmp: Path, scratch: Path, drop: np.ndarray, held: np.ndarray, split: bool,
                  stats: PrepareStats) -> None:
    names = ("train", "validation") if split else ("train",)
    counts = dict.fromkeys(names, 0)
    outs = {name: (tmp / f"{name}.jsonl").open("w", encoding="utf-8") for name in names}
    try:
        with scratch.open(encoding="utf-8") as f:
            for i, line in enumerate(f):
                if drop[i]:
                    continue
                name = "validation" if held[i] else "train"
                outs[name].write(line)
                counts[name] += 1
    finally:
        for out in outs.values():
            out.close()
    scratch.unlink()
    stats.written = counts


def render_card(path: Path, opts: PrepareOptions, stats: PrepareStats) -> str:
    kept = sum(stats.written.values())
    lines = [f"# Data card: {path.name}", "",
             f"Prepared by `tuneforge data prepare` from `{path}` for stage `{opts.stage}` (seed {opts.seed}). "
             f"{stats.read} records read, {kept} written ({', '.join(f'{k}: {v}' for k, v in stats.written.items())}).",
             "", "## Dropped", "", "| reason | records |", "|---|---|"]
    lines += [f"| {reason} | {n} |" for reason, n in sorted(stats.dropped.items()) if n] or ["| (none) | 0 |"]
    near = (f"estimated Jaccard >= {opts.near_dup_threshold} over word 3-grams, MinHash {opts.num_perm} permutations"
            if opts.dedup and opts.near_dup_threshold is not None else "off")
    lines += ["", f"Exact duplicates: identical content after normalisation{'' if opts.dedup else ' (off)'}; "
                  f"near-duplicates: {near}. The earliest record of each group is kept.", "",
              "## Changed", "", "| change | records |", "|---|---|",
              f"| unicode NFKC and whitespace normalised | {stats.normalized} |",
              f"| PII scrubbed{'' if opts.pii else ' (off)'} | {stats.scrubbed_records} |",
              f"| converted to {opts.to} | {stats.converted} |" if opts.to else "| format conversion | off |", ""]
    if stats.pii:
        lines += ["| PII kind | occurrences | replaced by |", "|---|---|---|"]
        lines += [f"| {k} | {n} | `{PLACEHOLDERS[k]}` |" for k, n in sorted(stats.pii.items())] + [""]
    if stats.labels:
        names = sorted({k for split in stats.labels.values() for k in split})
        lines += ["## Labels", "", "| label | " + " | ".join(stats.labels) + " |", "|---|" + "---|" * len(stats.labels)]
        lines += [f"| {n} | " + " | ".join(str(s.get(n, 0)) for s in stats.labels.values()) + " |" for n in names]
        lines.append("")
    if opts.val_ratio:
        how = "stratified by label" if STAGE_INFO[opts.stage].records == "classify" else "random"
        lines += [f"Validation split: {opts.val_ratio:.0%} of the kept records, {how}, seed {opts.seed}.", ""]
    if stats.examples:
        lines += ["## Examples (PII scrubbed)", ""]
        for kind, shown in sorted(stats.examples.items()):
            lines += [f"**{kind}**", ""] + [f"- {_snippet(s, 200)}" for s in shown] + [""]
    return "\n".join(lines)
