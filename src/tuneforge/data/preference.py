"""Pairwise preference data as the reward stage scores it (data.dpo_pairs builds dpo's examples from the
same records): `prompt` (optional) + `chosen` + `rejected` per record.

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

from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsExample
from tuneforge.data.fields import Issue, Messages, raise_first
from tuneforge.data.load import Record
from tuneforge.data.overlength import over_length
from tuneforge.data.records import normalised, preference_part, same_responses, to_conversation
from tuneforge.data.templates import apply_template, render
from tuneforge.errors import DataError

__all__ = ["PairExample", "PairStats", "encode", "load_pair_examples", "normalised", "pair_field",
           "to_conversation", "to_text", "use_template"]


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


def pair_field(record: Record, key: str, required: bool) -> str | Messages | None:
    """`prompt`, `chosen` or `rejected` of a preference record, as the preference validator reads it
    (data.records.preference_part); a DataError naming the record when unusable."""
    issues: list[Issue] = []
    value = preference_part(record.data, key, issues, required)
    raise_first(issues, record.where)
    return value


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
        if same_responses(prompt, *responses):
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
