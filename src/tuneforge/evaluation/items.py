"""The prompts a run generates for before and after training (report, generations.jsonl, tuneforge eval):
for a chat-template stage, the conversation up to its last assistant turn (the reference is that turn); for
pretraining, the first tokens of a document (the reference is how it goes on).

    items = generation_items(cfg, tokenizer, records)   # [GenerationItem(prompt, reference, question, prompt_ids)]

`prompt_ids` are what the model is given: the ids training built for the same conversation or document
(templates.build_prompt_ids / encode_text), so control tokens written in a row (`<|im_end|>`, ...) are plain text
unless data.special_tokens_in_text, and a row's prompt cannot forge a turn; `prompt` is its text, for reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.config.schema import Config
from tuneforge.data.formats import detect_format, to_messages, to_text
from tuneforge.data.load import Record
from tuneforge.data.templates import build_prompt_ids, encode_text, render
from tuneforge.data.tools import reference_text, row_tools
from tuneforge.stage_info import stage_info

PROMPT_TOKENS = 24


@dataclass
class GenerationItem:
    prompt: str  # the prompt's text (rendered with the run's template)
    reference: str | None
    question: str = ""  # what a person reads in the report: the last user turn, or the document's start
    prompt_ids: list[int] = field(default_factory=list)  # exactly what the model sees, tokenized as in training


def chat_items(cfg: Config, tokenizer, records: list[Record]) -> list[GenerationItem]:
    """Prompt = the conversation up to its last assistant turn; reference = that turn."""
    items = []
    for record in records[: cfg.eval.generate_samples]:
        fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(record, "sft")
        messages = to_messages(record, fmt, cfg.data.system_prompt)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        users = [m["content"] for m in messages[:last] if m["role"] == "user"]
        tools = row_tools(record.data)  # a tool row: the reference is the answer's text and its calls
        ids = build_prompt_ids(tokenizer, messages[:last], record.where, cfg.data.special_tokens_in_text, tools)
        items.append(GenerationItem(render(tokenizer, messages[:last], add_generation_prompt=True, tools=tools),
                                    reference_text(messages[last]), users[-1] if users else "", ids))
    return items


def text_items(cfg: Config, tokenizer, records: list[Record]) -> list[GenerationItem]:
    """Prompt = the first tokens of an eval document; reference = how the document goes on."""
    items = []
    adds_bos = tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False)
    bos = [tokenizer.bos_token_id] if adds_bos else []
    for record in records[: cfg.eval.generate_samples]:  # a document's ids as build_pretrain_examples builds them
        ids = encode_text(tokenizer, to_text(record, cfg.data.text_field), cfg.data.special_tokens_in_text)
        cut = min(PROMPT_TOKENS, len(ids) // 2)
        if cut == 0:
            continue
        prompt = tokenizer.decode(ids[:cut])
        items.append(GenerationItem(prompt, tokenizer.decode(ids[cut:]), prompt, [*bos, *ids[:cut]]))
    return items


def generation_items(cfg: Config, tokenizer, records: list[Record]) -> list[GenerationItem]:
    """The items for the stage of `cfg`: chat rows for a chat-template stage, text for pretraining (a
    classifier or scorer generates nothing)."""
    info = stage_info(cfg.stage)
    if not info.generates:
        return []
    return chat_items(cfg, tokenizer, records) if info.chat_template else text_items(cfg, tokenizer, records)
