"""Every stage's examples, built one way for training, `tuneforge validate` and the example tests: a run's
data files are checked and tokenized once into token caches (data.stage_cache) by the builder the stage
declares (`stage_info(stage).examples`), and read back lazily; validate prints the counts of exactly this build.
load_stage_examples builds the same examples in memory from records (tests).

    data = load_stage_data(cfg, tokenizer, log)          # train + eval examples, metrics.json's data block
    examples, stats = load_stage_examples(cfg, tokenizer, records)   # one record set; stats.summary()

Builders: lm (sft / pretrain samples with labels), classify (labelled texts), scored_pairs (reward: chosen and
rejected texts to score), dpo_pairs (prompt + response ids, as DPO trains on them), prompts (ppo / grpo).
Every stats object's summary() has at least records, examples, truncated and dropped_overlength.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsStats, label_set, load_cls_examples
from tuneforge.data.dataset import load_examples
from tuneforge.data.dpo_pairs import load_dpo_examples
from tuneforge.data.kto_rows import load_kto_examples
from tuneforge.data.load import Record
from tuneforge.data.mixing import concat_sources, load_eval_sources, load_mixed_train, merge_stats
from tuneforge.data.preference import load_pair_examples
from tuneforge.data.stage_cache import CachedSplit, load_cached_split
from tuneforge.data.templates import apply_template
from tuneforge.errors import DataError
from tuneforge.rl.prompts import build_prompt_examples
from tuneforge.stage_info import stage_info

Builder = Callable[[Config, Any, list[Record], "list[str] | None"], tuple[list, Any]]


def source_of(records: list[Record]) -> str:
    """The file the records came from (their `where` without the line or row)."""
    return re.sub(r"(:\d+|: row \d+)$", "", records[0].where) if records else "<no records>"


def _lm(cfg: Config, tokenizer, records: list[Record], labels: list[str] | None) -> tuple[list, Any]:
    if stage_info(cfg.stage).chat_template:  # sft renders the run's template (saved with the run)
        apply_template(tokenizer, cfg.data.template)
    return load_examples(cfg, tokenizer, source_of(records), records)


def _classify(cfg: Config, tokenizer, records: list[Record], labels: list[str] | None) -> tuple[list, Any]:
    return load_cls_examples(cfg, tokenizer, records, labels if labels is not None else label_set(cfg, records))


EXAMPLE_BUILDERS: dict[str, Builder] = {
    "lm": _lm,
    "classify": _classify,
    "scored_pairs": lambda cfg, tokenizer, records, labels: load_pair_examples(cfg, tokenizer, records),
    "dpo_pairs": lambda cfg, tokenizer, records, labels: load_dpo_examples(cfg, tokenizer, records),
    "prompts": lambda cfg, tokenizer, records, labels: build_prompt_examples(cfg, tokenizer, records),
    "kto_rows": lambda cfg, tokenizer, records, labels: load_kto_examples(cfg, tokenizer, records),
}


def load_stage_examples(cfg: Config, tokenizer, records: list[Record],
                        labels: list[str] | None = None) -> tuple[list, Any]:
    """(examples, stats) of `records` as the stage of `cfg` trains on them. `labels` (classify): the label
    order of the train set, for an eval set (default: data.labels, else the labels of `records`)."""
    if not records:
        raise DataError(f"{cfg.data.train}: no records to build {cfg.stage} examples from")
    return EXAMPLE_BUILDERS[stage_info(cfg.stage).examples](cfg, tokenizer, records, labels)


@dataclass
class StageData:
    train: Sequence  # data.token_cache.CachedExamples read by index (a list only where built from records)
    eval: Sequence
    train_stats: Any
    eval_stats: Any = None
    labels: list[str] | None = None  # classify: the label order of the run
    eval_records: list[Record] = field(default_factory=list)  # checked eval records (generation items use them)
    eval_sources: dict[str, Sequence] = field(default_factory=dict)  # several eval files: each one's examples by name
    summary: dict[str, dict] = field(default_factory=dict)  # metrics.json's `data` block: {"train": ..., "eval": ...}


def load_stage_data(cfg: Config, tokenizer, log: Callable[[str], None] = print) -> StageData:
    """Train and eval examples of a run, read from the token caches of the data files (data.stage_cache; built
    once, checked as they are built): eval held out of train by data.eval_split when there is no eval file,
    eval cut to eval.max_samples (default all; a cap is logged), eval classified with the train labels."""
    sources: list[dict] = []  # several train sources: what each contributes
    if stage_info(cfg.stage).examples == "lm" and stage_info(cfg.stage).chat_template:  # sft renders the run's
        apply_template(tokenizer, cfg.data.template)  # template (saved with the run); the others: use_template
    if isinstance(cfg.data.train, list):  # several sources (sft / pretrain), mixed by weight
        train, train_stats, sources = load_mixed_train(cfg, tokenizer, log)
        split = CachedSplit(train, train_stats)
    else:
        split = load_cached_split(cfg, tokenizer, log)
    labels = split.train_stats.labels if isinstance(split.train_stats, ClsStats) else None
    data = StageData(split.train, [], split.train_stats, labels=labels, summary={"train": split.train_stats.summary()},
                     eval_records=split.eval_records)
    if sources:
        data.summary["train"]["sources"] = sources
    if isinstance(cfg.data.eval, list):  # each eval source scored on its own too (its loss in metrics.json)
        data.eval_sources, by_name, data.eval_records = load_eval_sources(cfg, tokenizer, log)
        data.eval = concat_sources(list(data.eval_sources.values()))
        data.eval_stats = merge_stats(list(by_name.values()), " + ".join(by_name))
        data.summary["eval"] = data.eval_stats.summary() | {
            "sources": {name: stats.summary() for name, stats in by_name.items()}}
    elif split.eval_available:
        data.eval, data.eval_stats = split.eval, split.eval_stats
        data.summary["eval"] = data.eval_stats.summary() | eval_counts(cfg, split.eval_available, log)
    return data


def eval_counts(cfg: Config, available: int, log: Callable[[str], None] = print) -> dict:
    """How many of the `available` eval records are scored (eval.max_samples, default all) and how many are
    generated for the task metrics (eval.generate_samples): metrics.json's data.eval keys, logged when a cap
    leaves rows out, so a metric never silently covers fewer rows than the user gave."""
    scored = min(available, cfg.eval.max_samples or available)
    counts = {"records_available": available, "scored": f"{scored} of {available}"}
    if scored < available:
        log(f"eval: scoring {scored} of {available} eval rows (eval.max_samples={cfg.eval.max_samples}; "
            "null scores all)")
    if "exact_match" in stage_info(cfg.stage).metrics:  # the stages whose task metrics come from generations
        generated = min(available, cfg.eval.generate_samples)
        counts["generated"] = f"{generated} of {available}"
        if 0 < generated < available:
            log(f"eval: generation metrics ({', '.join(cfg.eval.metrics)}) on {generated} of {available} eval rows "
                f"(eval.generate_samples={cfg.eval.generate_samples})")
    return counts


def counts_line(split: str, summary: dict) -> str:
    """One line of counts for a split (what `tuneforge validate` prints and the stages log)."""
    line = (f"{split}: {summary['examples']} examples from {summary['records']} records ({summary['format']}), "
            f"{summary['truncated']} truncated, {summary['dropped_overlength']} dropped over length")
    if summary.get("corpus_tokens"):
        line += f", {summary['tokens']:,} of {summary['corpus_tokens']:,} corpus tokens used"
    if summary.get("dropped_identical"):
        line += f", {summary['dropped_identical']} dropped with chosen == rejected"
    if "supervised_tokens" in summary:
        line += (f", {summary['dropped_no_supervised']} without supervised tokens, "
                 f"{summary['supervised_tokens']} supervised tokens")
    return line
