"""Pairwise preference data for the reward stage: `prompt` (optional) + `chosen` + `rejected` per record.

    {"prompt": "say hello", "chosen": "hello there", "rejected": "no"}                      # strings
    {"prompt": [{"role": "user", "content": "say hello"}], "chosen": "hello", "rejected": "no"}
    {"chosen": [{"role": "user", ...}, {"role": "assistant", ...}], "rejected": [...]}      # conversations

    pairs, stats = load_pair_examples(cfg, tokenizer, records)

A tokenizer with a chat template (or data.template alpaca/chat) renders prompt + response as a
conversation with the run's template, so the reward model sees what the policy will produce; otherwise
the text is `prompt + "\\n\\n" + response`. Pairs whose chosen equals rejected (whitespace-normalised)
teach nothing and are counted and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsExample
from tuneforge.data.dataset import over_length
from tuneforge.data.formats import ROLES, Messages
from tuneforge.data.load import Record
from tuneforge.data.templates import apply_template, render
from tuneforge.errors import DataError


@dataclass(frozen=True)
class PairExample:
    chosen: ClsExample
    rejected: ClsExample


@dataclass
class PairStats:
    records: int = 0
    pairs: int = 0
    dropped_identical: int = 0
    truncated: int = 0
    dropped_overlength: int = 0
    lengths: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        return {"records": self.records, "examples": self.pairs, "dropped_identical": self.dropped_identical,
                "truncated": self.truncated, "dropped_overlength": self.dropped_overlength,
                "dropped_no_supervised": 0, "format": "preference",
                "length_mean": round(sum(self.lengths) / len(self.lengths), 1) if self.lengths else 0}


def _messages(value: list, where: str, key: str) -> Messages:
    if not value:
        raise DataError(f"{where}: field {key!r} is an empty message list")
    out: Messages = []
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: {key}[{i}] must be an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: {key}[{i}]: unknown role {m['role']!r}; expected one of {sorted(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def pair_field(record: Record, key: str, required: bool) -> str | Messages | None:
    value: Any = record.data.get(key)
    if value is None or (isinstance(value, float) and value != value):  # CSV/Parquet nulls
        if required:
            found = ", ".join(sorted(record.data)) or "none"
            raise DataError(f"{record.where}: missing field {key!r} (preference rows need 'chosen' and "
                            f"'rejected', optionally 'prompt'); fields found: {found}")
        return None
    if isinstance(value, str):
        if required and not value.strip():
            raise DataError(f"{record.where}: field {key!r} is empty")
        return value
    if isinstance(value, list):
        return _messages(value, record.where, key)
    raise DataError(f"{record.where}: field {key!r} must be a string or a list of {{role, content}} messages, "
                    f"got {type(value).__name__}")


def to_conversation(prompt: str | Messages | None, response: str | Messages) -> Messages:
    """prompt + response as chat messages: a string prompt is the user turn, a string response the assistant's."""
    before = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt or [])
    after = [{"role": "assistant", "content": response}] if isinstance(response, str) else response
    return before + after


def normalised(messages: Messages) -> list[tuple[str, str]]:
    return [(m["role"], " ".join(m["content"].split())) for m in messages]


def to_text(tokenizer, prompt: str | Messages | None, response: str | Messages, templated: bool) -> str:
    """The text the reward model scores; `templated`: render with the tokenizer's chat template."""
    if templated:
        return render(tokenizer, to_conversation(prompt, response))
    parts = [m["content"] for m in to_conversation(prompt, response)]
    return "\n\n".join(parts)


def use_template(cfg: Config, tokenizer) -> bool:
    """Install and use the run's template, or plain text for a tokenizer without one (data.template auto)."""
    if cfg.data.template == "auto" and not tokenizer.chat_template:
        return False
    apply_template(tokenizer, cfg.data.template)
    return True


def encode(tokenizer, text: str, max_length: int | None) -> list[int]:
    """Token ids; over `max_length` the text is cut from the left, so the prompt's start goes first and the
    response's end (where a decoder's reward is read) stays."""
    if max_length is None:
        return tokenizer(text, truncation=False)["input_ids"]
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = side


def load_pair_examples(cfg: Config, tokenizer, records: list[Record]) -> tuple[list[PairExample], PairStats]:
    templated = use_template(cfg, tokenizer)
    stats, pairs = PairStats(records=len(records)), []
    max_length = cfg.training.max_length
    for record in records:
        prompt = pair_field(record, "prompt", required=False)
        responses = [pair_field(record, key, required=True) for key in ("chosen", "rejected")]
        if normalised(to_conversation(prompt, responses[0])) == normalised(to_conversation(prompt, responses[1])):
            stats.dropped_identical += 1
            continue
        texts = [to_text(tokenizer, prompt, r, templated) for r in responses]
        ids = [encode(tokenizer, t, None) for t in texts]
        action = over_length(max(map(len, ids)), cfg, record.where, "pair")
        if action == "drop":
            stats.dropped_overlength += 1
            continue
        if action == "truncate":
            ids = [encode(tokenizer, t, max_length) for t in texts]
            stats.truncated += 1
        stats.lengths += [len(i) for i in ids]
        pairs.append(PairExample(ClsExample(ids[0], None, 0), ClsExample(ids[1], None, 0)))
    if not pairs and records:
        raise DataError(f"{records[0].where.rsplit(':', 1)[0]}: no usable preference pairs "
                        f"({stats.dropped_identical} identical, {stats.dropped_overlength} over length)")
    stats.pairs = len(pairs)
    return pairs, stats
