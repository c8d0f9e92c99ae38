"""KTO's unpaired rows: a `prompt` (optional; a string or chat messages), a `completion` (a string, the
assistant's answer, or messages ending on an assistant turn) and a boolean `label` (true: desirable, false:
undesirable). Tokenized exactly as dpo tokenizes a pair (data.dpo_pairs): the prompt as chat / serve tokenize
it, the completion through its end-of-turn EOS, over-length rows by training.overlength.

    {"prompt": "The capital of Poland is", "completion": "Warsaw.", "label": true}
    examples, stats = load_kto_examples(cfg, tokenizer, records)
    rows = kto_rows_of_pairs(pairs)           # chosen -> label true, rejected -> label false
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.config.schema import Config
from tuneforge.data.dpo_pairs import build_dpo_example, fit_responses
from tuneforge.data.fields import Messages
from tuneforge.data.load import Record
from tuneforge.data.preference import build_examples
from tuneforge.data.records import fields_of, require, to_conversation
from tuneforge.errors import DataError


@dataclass(frozen=True)
class KtoExample:
    prompt_ids: list[int]
    completion_ids: list[int]  # through its EOS
    label: bool

    def row(self) -> dict:
        return {"prompt_ids": self.prompt_ids, "completion_ids": self.completion_ids, "label": self.label}


@dataclass
class KtoStats:
    records: int = 0
    examples: int = 0
    desirable: int = 0
    truncated: int = 0
    dropped_overlength: int = 0
    lengths: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        return {"records": self.records, "examples": self.examples, "desirable": self.desirable,
                "undesirable": self.examples - self.desirable, "truncated": self.truncated,
                "dropped_overlength": self.dropped_overlength, "dropped_no_supervised": 0, "format": "kto",
                "length_mean": round(sum(self.lengths) / len(self.lengths), 1) if self.lengths else 0}


def split_completion(prompt: str | Messages | None, completion: str | Messages, where: str,
                     system_prompt: str | None = None) -> tuple[Messages, dict]:
    """(prompt messages, the assistant turn) of a row; `system_prompt` first unless the prompt has its own."""
    conversation = to_conversation(prompt, completion)
    if conversation[-1]["role"] != "assistant":
        raise DataError(f"{where}: 'completion' must end with an assistant turn")
    messages = conversation[:-1]
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages, conversation[-1]


def to_example(cfg: Config, tokenizer, record: Record, templated: bool) -> KtoExample:
    parts = require(record, "kto", fields_of(cfg)).parts
    prompt, completion, label = parts["prompt"], parts["completion"], parts["label"]
    messages, turn = split_completion(prompt, completion, record.where, cfg.data.system_prompt)
    pair = build_dpo_example(tokenizer, messages, turn, turn, templated, record.where,  # one response: dpo's rule
                             cfg.data.special_tokens_in_text)
    return KtoExample(pair.prompt_ids, pair.chosen_ids, label)


def kto_record(cfg: Config, tokenizer, record: Record, templated: bool, stats: KtoStats) -> KtoExample | None:
    """One record's row as kto trains on it (None: dropped over length, counted); over-length rows are cut as
    dpo cuts a pair (data.dpo_pairs.fit_responses). The one builder of the in-memory and the cached paths."""
    stats.records += 1
    example = to_example(cfg, tokenizer, record, templated)
    fitted = fit_responses(cfg, record.where, example.prompt_ids, [example.completion_ids], stats, "row")
    if fitted is None:
        return None
    prompt_ids, (completion_ids,) = fitted
    stats.lengths.append(len(prompt_ids) + len(completion_ids))
    stats.desirable += example.label
    return KtoExample(prompt_ids, completion_ids, example.label)


def load_kto_examples(cfg: Config, tokenizer, records: list[Record]) -> tuple[list[KtoExample], KtoStats]:
    stats = KtoStats()
    return build_examples(cfg, tokenizer, records, kto_record, stats, "kto rows"), stats


def kto_rows_of_pairs(pairs: list[dict]) -> list[dict]:
    """Preference pairs as kto rows, each pair's two rows side by side: chosen -> true, rejected -> false."""
    return [{"prompt": p.get("prompt"), "completion": p[key], "label": key == "chosen"} if p.get("prompt") is not None
            else {"completion": p[key], "label": key == "chosen"} for p in pairs for key in ("chosen", "rejected")]
