"""Supervised fine-tuning: loss on assistant tokens only (EOS included), chat template or alpaca.

    tuneforge train examples/quickstart.yaml
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.config.schema import Config
from tuneforge.data.formats import detect_format, to_messages
from tuneforge.data.load import Record
from tuneforge.data.templates import render
from tuneforge.stages.lm import GenerationItem, run_lm


def generation_items(cfg: Config, tokenizer, records: list[Record]) -> list[GenerationItem]:
    """Prompt = the conversation up to its last assistant turn; reference = that turn."""
    items = []
    for record in records[: cfg.eval.generate_samples]:
        fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(record, "sft")
        messages = to_messages(record, fmt, cfg.data.system_prompt)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        items.append(GenerationItem(render(tokenizer, messages[:last], add_generation_prompt=True),
                                    messages[last]["content"]))
    return items


def run(cfg: Config, *, on_eval=None) -> Path:
    return run_lm(cfg, generation_items, on_eval=on_eval)
