"""Continued pre-training on raw text (domain adaptation): every token is supervised, EOS after each
document, long documents split into max_length chunks with `training.overlength=split`.

    tuneforge train examples/pretrain.yaml
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.config.schema import Config
from tuneforge.data.formats import to_text
from tuneforge.data.load import Record
from tuneforge.stages.lm import GenerationItem, run_lm

PROMPT_TOKENS = 24


def generation_items(cfg: Config, tokenizer, records: list[Record]) -> list[GenerationItem]:
    """Prompt = the first tokens of an eval document; reference = how the document goes on."""
    items = []
    for record in records[: cfg.eval.generate_samples]:
        ids = tokenizer(to_text(record, cfg.data.text_field), add_special_tokens=False)["input_ids"]
        cut = min(PROMPT_TOKENS, len(ids) // 2)
        if cut == 0:
            continue
        items.append(GenerationItem(tokenizer.decode(ids[:cut]), tokenizer.decode(ids[cut:])))
    return items


def run(cfg: Config, *, on_eval=None) -> Path:
    return run_lm(cfg, generation_items, task_metrics=False, on_eval=on_eval)
