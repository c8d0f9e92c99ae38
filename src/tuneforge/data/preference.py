"""Pairwise preference data as the reward stage scores it (data.dpo_pairs builds dpo's examples from the
same records): `prompt` (optional) + `chosen` + `rejected` per record.

    {"prompt": "say hello", "chosen": "hello there", "rejected": "no"}                      # strings
    {"prompt": [{"role": "user", "content": "say hello"}], "chosen": "hello", "rejected": "no"}
    {"chosen": [{"role": "user", ...}, {"role": "assistant", ...}], "rejected": [...]}      # conversations

    pairs, stats = load_pair_examples(cfg, tokenizer, records)

A tokenizer with a chat template (or data.template alpaca/chat) renders prompt + response as a
conversation with the run's template, so the reward model sees what the policy will produce; otherwise
the text is `prompt + "\\n\\n" + response`. Pairs whose chosen equals rejected (whitespace-normalised)
teach nothing and are counted and dropped. Control tokens written in the fields (`<|im_end|>`, ...) are plain
text unless data.special_tokens_in_text (`to_ids`), so a row cannot forge a turn of the scored conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsExample
from tuneforge.data.fields import Issue, Messages, raise_first
from tuneforge.data.load import Record
from tuneforge.data.overlength import over_length
from tuneforge.data.records import normalised, preference_part, same_responses, to_conversation
from tuneforge.data.templates import apply_template, control_tokens, escape_messages, render
from tuneforge.data.templates import encode as encode_pieces
from tuneforge.errors import DataError

__all__ = ["PairExample", "PairStats", "encode", "load_pair_examples", "normalised", "pair_field", "pair_record",
           "to_conversation", "to_ids", "to_text", "use_template"]


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


def _join(tokenizer, messages: Messages, templated: bool) -> str:
    if templated:
        return render(tokenizer, messages)
    return "\n\n".join(m["content"] for m in messages)


def to_text(tokenizer, prompt: str | Messages | None, response: str | Messages, templated: bool) -> str:
    """The text the reward model scores; `templated`: render with the tokenizer's chat template."""
    return _join(tokenizer, to_conversation(prompt, response), templated)


def to_ids(tokenizer, prompt: str | Messages | None, response: str | Messages, templated: bool,
           max_length: int | None = None, special_tokens_in_text: bool = False) -> list[int]:
    """Token ids of `to_text`'s text as the reward stage trains on them and a reward run scores them: control
    tokens inside the fields are plain text unless `special_tokens_in_text` (the template's own stay special);
    over `max_length` cut from the left as `encode` does. A pair without control tokens: `encode(to_text(...))`."""
    messages = to_conversation(prompt, response)
    pieces: list[str] = []
    if not special_tokens_in_text:
        messages, pieces = escape_messages(messages, control_tokens(tokenizer))
    text = _join(tokenizer, messages, templated)
    if not pieces:
        return encode(tokenizer, text, max_length)
    before, after = _added_ids(tokenizer)
    ids = encode_pieces(tokenizer, text, pieces)
    if max_length is not None:
        ids = ids[max(0, len(ids) + len(before) + len(after) - max_length) :]
    return before + ids + after


def _added_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's own call puts before and after a text (BOS; [CLS] ... [SEP])."""
    probe = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    extra = len(probe) - len(bare)
    head = next((k for k in range(extra + 1) if probe[k : k + len(bare)] == bare), extra)
    return probe[:head], probe[head + len(bare) :]


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


def pair_record(cfg: Config, tokenizer, record: Record, templated: bool, stats: PairStats) -> PairExample | None:
    """One record's pair as the reward stage scores it (None: dropped, counted in `stats`); the one builder of
    the in-memory and the cached (data.stage_cache) paths."""
    stats.records += 1
    prompt = pair_field(record, "prompt", required=False)
    responses = [pair_field(record, key, required=True) for key in ("chosen", "rejected")]
    if same_responses(prompt, *responses):
        stats.dropped_identical += 1
        return None
    special = cfg.data.special_tokens_in_text
    ids = [to_ids(tokenizer, prompt, r, templated, None, special) for r in responses]
    action = over_length(max(map(len, ids)), cfg, record.where, "pair")
    if action == "drop":
        stats.dropped_overlength += 1
        return None
    if action == "truncate":
        ids = [to_ids(tokenizer, prompt, r, templated, cfg.training.max_length, special) for r in responses]
        stats.truncated += 1
    stats.lengths += [len(i) for i in ids]
    return PairExample(ClsExample(ids[0], None, 0), ClsExample(ids[1], None, 0))


def no_usable(where: str, what: str, stats) -> DataError:
    """The error when every record of a file was dropped (reward and dpo pairs, kto rows), with why."""
    counts = [f"{stats.dropped_identical} identical"] if hasattr(stats, "dropped_identical") else []
    return DataError(f"{where}: no usable {what} ({', '.join([*counts, f'{stats.dropped_overlength} over length'])})")


def build_examples(cfg: Config, tokenizer, records: list[Record], build, stats, what: str) -> list:
    """Every record's example by `build` (a per-record builder: pair_record, dpo_record, kto_record; None when
    dropped), with the run's template installed; an error naming the file when none is usable."""
    templated = use_template(cfg, tokenizer)
    examples = [e for record in records if (e := build(cfg, tokenizer, record, templated, stats)) is not None]
    if not examples and records:
        raise no_usable(records[0].where.rsplit(":", 1)[0], what, stats)
    setattr(stats, "pairs" if isinstance(stats, PairStats) else "examples", len(examples))
    return examples


def load_pair_examples(cfg: Config, tokenizer, records: list[Record]) -> tuple[list[PairExample], PairStats]:
    stats = PairStats()
    return build_examples(cfg, tokenizer, records, pair_record, stats, "preference pairs"), stats
