"""Validate a whole data set for a stage and report every problem with its file:line and count:
malformed lines, missing / empty / mistyped fields, unknown roles and broken turn order, chosen ==
rejected, label distribution, exact and near-duplicates, and (with a tokenizer) token lengths, how
many exceed max_length and the share of supervised tokens.

    report = check_records(iter_records("train.jsonl"), "sft", tokenizer=tok, max_length=512)
    report.raise_for_errors()     # what the training stages call before they train

Memory per record is a few dozen bytes (duplicate index, line number, length), so files larger than
RAM stream through; only the first `max_examples` locations of each kind of problem are kept.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data.load import BadLine, Item, line_of, where_template
from tuneforge.data.records import DEFAULT_FIELDS, Fields, View, view_record
from tuneforge.data.templates import control_tokens, find_control_tokens
from tuneforge.datatools.dedup import DupIndex
from tuneforge.errors import DataError
from tuneforge.fsutil import save_figure_atomic
from tuneforge.stage_info import STAGE_INFO

ERRORS = {
    "not_utf8": "line is not UTF-8 text", "malformed_json": "line is not valid JSON",
    "not_object": "line is JSON but not an object", "bad_csv_row": "CSV row does not fit the header",
    "unknown_format": "fields match no format of the stage", "missing_field": "a required field is missing",
    "empty_field": "a required field is empty", "wrong_type": "a field has the wrong type",
    "bad_message": "a chat message is not a {role, content} object", "unknown_role": "a chat role is unknown",
    "turn_order": "chat turns out of order", "no_assistant": "a conversation has no assistant turn",
    "bad_label": "a label is neither a string nor an integer",
    "chosen_equals_rejected": "chosen and rejected are identical", "template_error": "the chat template fails",
    "empty_file": "the file has no records", "bad_tools": "tools is not a function list", "unknown_tool":
    "a call to a function not in tools", "bad_tool_call": "a malformed tool call", "bad_arguments": "call arguments "
    "are not a JSON object", "orphan_tool_result": "a tool message with no call before it"}
WARNINGS = {
    "duplicate": "exact duplicate of an earlier record", "near_duplicate": "near-duplicate of an earlier record",
    "conflicting_label": "same text as an earlier record, different label",
    "over_max_length": "longer than max_length tokens (truncated or dropped in training)",
    "no_supervised_tokens": "no supervised token left within max_length",
    "single_label": "only one label value", "rare_label": "a label with fewer than 2 records (cannot be split)",
    "control_tokens": "text contains chat-template control tokens (plain text in training unless "
                      "data.special_tokens_in_text=true)",
}


@dataclass
class Finding:
    kind: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def severity(self) -> str:
        return "error" if self.kind in ERRORS else "warning"


@dataclass
class CheckReport:
    path: str
    stage: str
    records: int = 0
    valid: int = 0
    findings: dict[str, Finding] = field(default_factory=dict)
    labels: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    tokens: dict[str, Any] | None = None
    lengths: np.ndarray | None = field(default=None, repr=False)
    max_examples: int = 20

    def add(self, kind: str, where: str, message: str) -> None:
        finding = self.findings.setdefault(kind, Finding(kind))
        finding.count += 1
        if self.max_examples <= 0 or len(finding.examples) < self.max_examples:
            finding.examples.append(f"{where}: {message}")

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings.values() if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings.values() if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.findings

    def raise_for_errors(self, limit: int = 5) -> None:
        """DataError naming every kind of error with its first locations (records a stage cannot use)."""
        if not self.errors:
            return
        lines = [f"{self.path}: {sum(f.count for f in self.errors)} unusable records "
                 f"(run `tuneforge data check {self.path} --stage {self.stage}` for the full report)"]
        for f in self.errors:
            lines += [f"  {f.kind} ({f.count}): {ERRORS[f.kind]}"] + [f"    {e}" for e in f.examples[:limit]]
        raise DataError("\n".join(lines))

    def warning_lines(self, limit: int = 3) -> list[str]:
        return [f"{f.kind} ({f.count}): {WARNINGS[f.kind]}; e.g. " + "; ".join(f.examples[:limit])
                for f in self.warnings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "stage": self.stage, "records": self.records, "valid": self.valid, "ok": self.ok,
            "errors": sum(f.count for f in self.errors), "warnings": sum(f.count for f in self.warnings),
            "findings": {k: {"severity": f.severity, "count": f.count,
                             "description": (ERRORS | WARNINGS)[k], "examples": f.examples}
                         for k, f in sorted(self.findings.items())},
            "formats": dict(self.formats), "labels": dict(self.labels.most_common()), "tokens": self.tokens,
        }


def _token_stats(view: View, tokenizer, max_length: int | None, stage: str, special: bool) -> tuple[int, int, int]:
    """(tokens, supervised tokens, supervised tokens within max_length) as the stage's builder makes them, with
    control tokens written in a row plain text unless `special` (data.special_tokens_in_text)."""
    from tuneforge.data.dpo_pairs import build_dpo_example, split_turns
    from tuneforge.data.preference import to_ids
    from tuneforge.data.templates import build_pretrain_examples, build_sft_example
    from tuneforge.rl.prompts import to_prompt_ids

    if view.messages is not None:
        example = build_sft_example(tokenizer, view.messages, "", special, view.parts.get("tools"))
        kept = example.labels[:max_length] if max_length else example.labels
        return len(example.input_ids), example.n_supervised, sum(1 for x in kept if x != -100)
    if view.fmt == "text":
        n = len(build_pretrain_examples(tokenizer, view.parts["text"], 0, False, special)[0].input_ids)
        return n, n, min(n, max_length or n)
    if view.fmt == "classify":
        n = len(tokenizer(view.parts["text"], view.parts["text_pair"])["input_ids"])
        return n, 0, 0
    parts, templated = view.parts, bool(getattr(tokenizer, "chat_template", None))  # as data.template auto
    if view.fmt == "prompt":
        return len(to_prompt_ids(tokenizer, parts["prompt"], templated, None, special)), 0, 0
    responses = parts["chosen"], parts["rejected"]
    if STAGE_INFO[stage].examples == "dpo_pairs":  # the length dpo's over-length rule counts
        pair = build_dpo_example(tokenizer, *split_turns(parts["prompt"], *responses, "row"), templated, "row", special)
        return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids)), 0, 0
    return max(len(to_ids(tokenizer, parts["prompt"], r, templated, None, special)) for r in responses), 0, 0


def check_records(items: Iterable[Item], stage: str, *, tokenizer=None, max_length: int | None = None,
                  fields: Fields | None = None, near_dup_threshold: float | None = 0.85, num_perm: int = 32,
                  max_examples: int = 20, path: str | Path | None = None,
                  special_tokens_in_text: bool = False) -> CheckReport:
    """Check every record; `items` may be `load_records(...)` or the stream from `iter_records(...)`;
    records are validated as `stage_info(stage).records` (data.records.view_record).
    `tokenizer` (with the chat template applied for sft) adds token statistics, counted as the stage builds
    examples (`special_tokens_in_text`: data.special_tokens_in_text)."""
    if stage not in STAGE_INFO:
        raise DataError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_INFO)}")
    kind = STAGE_INFO[stage].records
    report = CheckReport(str(path or ""), stage, max_examples=max_examples)
    index = DupIndex(near_dup_threshold, num_perm)
    lines, lengths, label_ids = array("I"), array("I"), {}
    supervised = total = 0
    where_of: Callable[[int], str] | None = None
    controls = control_tokens(tokenizer) if tokenizer is not None else None  # None: the usual shapes
    with index:
        for item in items:
            report.records += 1
            if not report.path:
                report.path = re.sub(r"(:\d+| row \d+)$", "", item.where).rstrip(":")
            if isinstance(item, BadLine):
                report.add(item.kind, item.where, item.message)
                continue
            view, issues = view_record(item.data, kind, fields or DEFAULT_FIELDS)
            for issue in issues:
                report.add(issue.kind, item.where, issue.message)
            if view is None:
                continue
            if found := find_control_tokens(view.text, controls):
                report.add("control_tokens", item.where, "contains " + ", ".join(found[:3]))
            if tokenizer is not None:
                try:
                    n, n_sup, n_sup_kept = _token_stats(view, tokenizer, max_length, stage, special_tokens_in_text)
                except DataError as exc:
                    report.add("template_error", item.where, str(exc).split(": ", 1)[-1])
                    continue
                lengths.append(n)
                total, supervised = total + n, supervised + n_sup
                if max_length and n > max_length:
                    report.add("over_max_length", item.where, f"{n} tokens > max_length {max_length}")
                if view.messages is not None and n_sup_kept == 0:
                    report.add("no_supervised_tokens", item.where, f"the prompt alone fills max_length {max_length}")
            report.valid += 1
            report.formats[view.fmt] += 1
            if view.label is not None:
                report.labels[view.label] += 1
            where_of = where_of or where_template(item.where)
            index.add(view.key, view.text, label_ids.setdefault(view.label, len(label_ids)))
            lines.append(line_of(item.where))
        _duplicates(report, index, lines, where_of, near_dup_threshold is not None, label_ids)
    _labels(report)
    if report.records == 0:
        report.add("empty_file", report.path, "no records")
    if tokenizer is not None and lengths:
        report.lengths = np.frombuffer(lengths, dtype=np.uint32).astype(np.int64)
        report.tokens = _length_summary(report.lengths, max_length, supervised, total, stage)
    return report


def _duplicates(report: CheckReport, index: DupIndex, lines: array, where_of, near: bool,
                label_ids: dict) -> None:
    if where_of is None:
        return
    names = {v: k for k, v in label_ids.items()}
    exact = index.exact_duplicates()
    for j, i in sorted(exact.items()):
        if index.tag(i) != index.tag(j):
            there, here = names[index.tag(i)], names[index.tag(j)]
            report.add("conflicting_label", where_of(lines[j]),
                       f"same text as {where_of(lines[i])}, labelled {there!r} there, {here!r} here")
        else:
            report.add("duplicate", where_of(lines[j]), f"duplicate of {where_of(lines[i])}")
    if near:
        for j, (i, sim) in sorted(index.near_duplicates(exact).items()):
            report.add("near_duplicate", where_of(lines[j]), f"near-duplicate of {where_of(lines[i])} "
                                                             f"(estimated Jaccard {sim:.2f})")


def _labels(report: CheckReport) -> None:
    if STAGE_INFO[report.stage].records != "classify" or not report.labels:
        return
    if len(report.labels) == 1:
        report.add("single_label", report.path, f"every record is labelled {next(iter(report.labels))!r}")
    for label, count in sorted(report.labels.items()):
        if count < 2:
            report.add("rare_label", report.path, f"label {label!r} has {count} record")


def _length_summary(lengths: np.ndarray, max_length: int | None, supervised: int, total: int, stage: str) -> dict:
    pct = {f"p{p}": int(np.percentile(lengths, p)) for p in (50, 90, 95, 99)}
    out: dict[str, Any] = {"count": int(len(lengths)), "mean": round(float(lengths.mean()), 1),
                           "min": int(lengths.min()), "max": int(lengths.max()), **pct, "total": int(total),
                           "max_length": max_length,
                           "over_max_length": int((lengths > max_length).sum()) if max_length else None}
    if STAGE_INFO[stage].records in ("sft", "pretrain"):
        out["supervised_tokens"] = int(supervised)
        out["supervised_share"] = round(supervised / total, 4) if total else 0.0
    return out


def plot_lengths(report: CheckReport, path: Path) -> None:
    """Histogram of token lengths with max_length marked (Agg backend, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert report.lengths is not None and report.tokens is not None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.hist(report.lengths, bins=min(60, max(5, len(np.unique(report.lengths)))), color="tab:blue", alpha=0.8)
    max_length = report.tokens.get("max_length")
    if max_length:
        over = report.tokens["over_max_length"]
        ax.axvline(max_length, color="tab:red", ls="--", label=f"max_length {max_length} ({over} over)")
        ax.legend()
    ax.set_xlabel("tokens per sample (template applied)")
    ax.set_ylabel("samples")
    ax.set_title(f"{Path(report.path).name}: {report.tokens['count']} samples, median {report.tokens['p50']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def to_markdown(report: CheckReport) -> str:
    d = report.to_dict()
    verdict = "clean" if report.ok else f"{d['errors']} error(s), {d['warnings']} warning(s)"
    lines = [f"# data check: {report.path} ({report.stage})", "",
             f"{report.records} records, {report.valid} usable; {verdict}", ""]
    if report.formats:
        lines += ["formats: " + ", ".join(f"{k} {v}" for k, v in report.formats.most_common()), ""]
    if report.labels:
        n = sum(report.labels.values())
        lines += ["| label | records | share |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {v / n:.1%} |" for k, v in report.labels.most_common(30)]
        lines += [f"| ... {len(report.labels) - 30} more | | |"] if len(report.labels) > 30 else []
        lines.append("")
    if report.tokens:
        t = report.tokens
        lines += ["| tokens | " + " | ".join(k for k in t if t[k] is not None) + " |",
                  "|---|" + "---|" * sum(v is not None for v in t.values()),
                  "| | " + " | ".join(str(v) for v in t.values() if v is not None) + " |", ""]
    for f in sorted(report.findings.values(), key=lambda f: (f.severity, f.kind)):
        lines.append(f"## {f.severity}: {f.kind} ({f.count}): {(ERRORS | WARNINGS)[f.kind]}")
        lines += [f"- {e}" for e in f.examples]
        if f.count > len(f.examples):
            lines.append(f"- ... and {f.count - len(f.examples)} more")
        lines.append("")
    return "\n".join(lines)
