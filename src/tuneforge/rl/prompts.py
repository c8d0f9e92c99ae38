"""Prompt data for the RL stages (ppo, grpo): rows with `prompt` (a string, or chat messages ending on a user
turn) and any other columns, which reward functions receive by name (e.g. `answer` for exact_match).

    examples, stats = build_prompt_examples(cfg, tokenizer, records)    # stats.summary(): counts
    examples, summary = load_prompt_examples(cfg, tokenizer, records)    # the same, counts as a dict

The policy continues `text`: the prompt rendered with the run's chat template plus the generation prompt
(a string prompt is the user turn), or the plain string for a tokenizer without a template (data.template
auto). The same template is saved with the run, so chat / serve render prompts as the policy saw them, and
`input_ids` are built as chat / serve build a prompt's ids (templates.build_prompt_ids): control tokens written in
the prompt (`<|im_end|>`, ...) are plain text unless data.special_tokens_in_text, so a row cannot forge a turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.config.schema import Config, SamplingConfig
from tuneforge.data.fields import Messages
from tuneforge.data.load import Record
from tuneforge.data.overlength import over_length
from tuneforge.data.preference import use_template
from tuneforge.data.records import require
from tuneforge.data.templates import build_prompt_ids, encode_text, render
from tuneforge.errors import DataError
from tuneforge.stage_info import stage_info


@dataclass(frozen=True)
class PromptExample:
    prompt: str | Messages  # as in the data
    text: str  # what the policy continues
    input_ids: list[int]
    columns: dict[str, Any]  # the row's other fields
    where: str  # file:line


@dataclass
class PromptStats:
    records: int = 0
    examples: int = 0
    truncated: int = 0
    dropped_overlength: int = 0
    templated: bool = False

    def summary(self) -> dict:
        return {"records": self.records, "examples": self.examples, "truncated": self.truncated,
                "dropped_overlength": self.dropped_overlength, "dropped_no_supervised": 0, "format": "prompt",
                "templated": self.templated}


def sampling_of(cfg: Config) -> SamplingConfig:
    """The stage's sampling block (ppo: or grpo:)."""
    block = getattr(cfg, stage_info(cfg.stage).block or "", None)
    if not isinstance(block, SamplingConfig):
        raise DataError(f"stage {cfg.stage!r} does not sample completions")
    return block


def _messages(prompt: str | Messages, system_prompt: str | None) -> Messages:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def to_prompt_text(tokenizer, prompt: str | Messages, templated: bool, system_prompt: str | None = None) -> str:
    """`system_prompt` (data.system_prompt) goes first unless the prompt has its own, as in sft."""
    if not templated:
        return prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
    return render(tokenizer, _messages(prompt, system_prompt), add_generation_prompt=True)


def to_prompt_ids(tokenizer, prompt: str | Messages, templated: bool, system_prompt: str | None = None,
                  special_tokens_in_text: bool = False, where: str = "prompt") -> list[int]:
    """The ids of `to_prompt_text`'s text as sft, chat and serve tokenize that conversation (plain text: as
    pretrain does); control tokens inside the prompt are plain text unless `special_tokens_in_text`."""
    if not templated:
        return encode_text(tokenizer, to_prompt_text(tokenizer, prompt, False), special_tokens_in_text)
    return build_prompt_ids(tokenizer, _messages(prompt, system_prompt), where, special_tokens_in_text)


def prompt_budget(cfg: Config) -> int:
    """The tokens a prompt may have: training.max_length less the stage's max_new_tokens (an error if none)."""
    budget = cfg.training.max_length - sampling_of(cfg).max_new_tokens
    if budget < 1:
        raise DataError(f"training.max_length ({cfg.training.max_length}) leaves no room for a prompt next to "
                        f"{cfg.stage}.max_new_tokens ({sampling_of(cfg).max_new_tokens})")
    return budget


def prompt_record(cfg: Config, tokenizer, record: Record, templated: bool, stats: PromptStats) -> PromptExample | None:
    """One record's prompt as the policy continues it (None: dropped over length, counted in `stats`); over-long
    prompts follow training.overlength (truncate keeps the prompt's end, the part next to the answer). The one
    builder of the in-memory and the cached (data.stage_cache) paths."""
    stats.records += 1
    budget = prompt_budget(cfg)
    prompt = require(record, "prompt").parts["prompt"]
    text = to_prompt_text(tokenizer, prompt, templated, cfg.data.system_prompt)
    ids = to_prompt_ids(tokenizer, prompt, templated, cfg.data.system_prompt, cfg.data.special_tokens_in_text,
                        record.where)
    action = over_length(len(ids), cfg, record.where, "prompt", budget,
                         f"training.max_length - {cfg.stage}.max_new_tokens")
    if action == "drop":
        stats.dropped_overlength += 1
        return None
    if action == "truncate":
        stats.truncated += 1
        ids = ids[-budget:]
        text = tokenizer.decode(ids)
    columns = {k: v for k, v in record.data.items() if k != "prompt"}
    return PromptExample(prompt, text, ids, columns, record.where)


def no_usable_prompts(where: str, stats: PromptStats) -> DataError:
    return DataError(f"{where}: no usable prompts ({stats.dropped_overlength} over max_length)")


def build_prompt_examples(cfg: Config, tokenizer, records: list[Record]) -> tuple[list[PromptExample], PromptStats]:
    """Prompts as the policy continues them (prompt_record). Records are read with the prompt validator (the
    check `tuneforge data check --stage ppo` runs), so an unchecked record is a DataError naming it."""
    templated = use_template(cfg, tokenizer)
    prompt_budget(cfg)  # no room for a prompt: the error even without records
    stats = PromptStats(templated=templated)
    examples = [e for record in records if (e := prompt_record(cfg, tokenizer, record, templated, stats)) is not None]
    stats.examples = len(examples)
    if not examples:
        raise no_usable_prompts(records[0].where.rsplit(":", 1)[0] if records else cfg.data.train, stats)
    return examples, stats


def load_prompt_examples(cfg: Config, tokenizer, records: list[Record]) -> tuple[list[PromptExample], dict]:
    """build_prompt_examples with the counts as a dict (what the ppo and grpo stages read today)."""
    examples, stats = build_prompt_examples(cfg, tokenizer, records)
    return examples, stats.summary()
