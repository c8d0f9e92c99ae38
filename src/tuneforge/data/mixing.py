"""Several training sources mixed by weight (`data.train: [{path: a.jsonl, weight: 0.7}, {path: b.jsonl,
weight: 0.3}]`), and several eval sources each scored on its own. Each source, train or eval, is checked and tokenized
into its own cache (data.token_cache); the mix is an index over them, fixed by the seed, so a resumed run trains on the
same mix; the eval sources are read one after another (concat_sources).

The mix holds as many sequences as the sources together; source i contributes weight_i / sum(weights) of them
(largest-remainder rounding, at least one): a source with fewer sequences than its share is repeated (each
pass in a new seeded order), one with more is subsampled. The training loop then shuffles the mix per epoch.

    train = mix_sources(parts, [0.7, 0.3], seed)           # a Sequence of Examples, like one source's
    tokens_by_source(train, steps, per_epoch, batch_size, grad_accum, seed)   # what each source trained
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np

from tuneforge.config.schema import Config
from tuneforge.data.batching import epoch_order
from tuneforge.data.dataset import DataStats
from tuneforge.data.load import Record
from tuneforge.data.stage_cache import load_cached_eval
from tuneforge.data.token_cache import load_cached_examples


def source_list(value) -> list[tuple[str, float]]:
    """(path, weight) of each source of data.train / data.eval (a plain string is one source of weight 1)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [(value, 1.0)]
    return [(s.path, s.weight) for s in value]


def source_names(paths: list[str]) -> list[str]:
    """Short unique names for metrics keys: the file names, or the paths where two file names are equal."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def mix_counts(sizes: list[int], weights: list[float]) -> list[int]:
    """Sequences each source contributes: its weight's share of all the sources' sequences."""
    total = sum(sizes)
    raw = np.asarray(weights, dtype=np.float64) / sum(weights) * total
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return [max(1, int(c)) for c in counts]


class MixedExamples(Sequence):
    """The mix: position i is example `example[i]` of source `source[i]` (6 bytes per sequence)."""

    def __init__(self, parts: list[Sequence], source: np.ndarray, example: np.ndarray):
        self.parts, self.source, self.example = parts, source, example

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return self.parts[int(self.source[i])][int(self.example[i])]

    def lengths(self) -> np.ndarray:
        out = np.empty(len(self), dtype=np.int64)
        for s, part in enumerate(self.parts):
            mine = self.source == s
            out[mine] = np.asarray(part.lengths())[self.example[mine]]
        return out


def mix_sources(parts: list[Sequence], weights: list[float], seed: int) -> MixedExamples:
    counts = mix_counts([len(p) for p in parts], weights)
    sources, examples = [], []
    for s, (part, count) in enumerate(zip(parts, counts, strict=True)):
        rng = np.random.default_rng([seed, s])
        passes = -(-count // len(part))
        picks = np.concatenate([rng.permutation(len(part)) for _ in range(passes)])[:count]
        sources.append(np.full(count, s, dtype=np.uint16))
        examples.append(picks.astype(np.int32))
    return MixedExamples(parts, np.concatenate(sources), np.concatenate(examples))


def tokens_by_source(mix: MixedExamples, steps: int, per_epoch: int, batch_size: int, grad_accum: int,
                     seed: int) -> list[int]:
    """Tokens of each source the loop trained on in `steps` optimizer steps: whole epochs cover the mix, the
    last partial one the first micro-batches of its seeded order (data.batching.epoch_order, as the loop walks)."""
    n, k = len(mix), len(mix.parts)
    lengths = mix.lengths()
    full, rest = divmod(steps, per_epoch)
    total = full * np.bincount(mix.source, weights=lengths, minlength=k)
    if rest:
        taken = epoch_order(n, seed, full)[: min(n, rest * grad_accum * batch_size)]
        total = total + np.bincount(mix.source[taken], weights=lengths[taken], minlength=k)
    return [int(t) for t in total]


def merge_stats(stats: list[DataStats], path: str) -> DataStats:
    """One DataStats over several sources' (counts summed, lengths joined)."""
    out = DataStats(path=path, format="+".join(sorted({f for s in stats for f in s.format.split("+")})))
    for f in fields(DataStats):
        if f.type == "int" or isinstance(getattr(out, f.name), int):
            setattr(out, f.name, sum(getattr(s, f.name) for s in stats))
    out.lengths = np.concatenate([np.asarray(s.lengths, dtype=np.int64) for s in stats])
    return out


def load_mixed_train(cfg: Config, tokenizer, log: Callable[[str], None] = print
                     ) -> tuple[MixedExamples, DataStats, list[dict]]:
    """(the mix of data.train's sources, its stats, one summary per source for metrics.json)."""
    listed = source_list(cfg.data.train)
    parts, stats = [], []
    for path, _weight in listed:
        examples, source_stats, _ = load_cached_examples(cfg, tokenizer, path, log)
        parts.append(examples)
        stats.append(source_stats)
    mix = mix_sources(parts, [w for _, w in listed], cfg.seed)
    merged = merge_stats(stats, " + ".join(p for p, _ in listed))
    merged.lengths = mix.lengths()
    merged.examples, merged.tokens = len(mix), int(merged.lengths.sum())
    supervised = [p.supervised() for p in parts]
    merged.supervised_tokens = int(sum(supervised[s][mix.example[mix.source == s]].sum() for s in range(len(parts))))
    per_source = []
    for s, ((path, weight), part, st) in enumerate(zip(listed, parts, stats, strict=True)):
        mine = mix.source == s
        per_source.append({"path": path, "weight": weight, "examples": len(part), "corpus_tokens": st.corpus_tokens,
                           "in_mix": int(mine.sum()), "share": round(float(mine.mean()), 4),
                           "tokens_in_mix": int(merged.lengths[mine].sum())})
        log(f"data mix: {path}: weight {weight} -> {per_source[-1]['in_mix']:,} of {len(mix):,} sequences "
            f"({len(part):,} in the source)")
    return mix, merged, per_source


def concat_sources(parts: list[Sequence]) -> MixedExamples:
    """The examples of every source one after another, read from each by index (nothing copied)."""
    source = np.concatenate([np.full(len(p), s, dtype=np.uint16) for s, p in enumerate(parts)])
    example = np.concatenate([np.arange(len(p), dtype=np.int32) for p in parts])
    return MixedExamples(parts, source, example)


def load_eval_sources(cfg: Config, tokenizer, log: Callable[[str], None] = print
                      ) -> tuple[dict[str, Sequence], dict[str, DataStats], list[Record]]:
    """Each eval source's examples from its own token cache (cut to eval.max_samples) and stats by name, and all
    their records in order (the generation items' text)."""
    paths = [p for p, _ in source_list(cfg.data.eval)]
    examples, stats, records = {}, {}, []
    for name, path in zip(source_names(paths), paths, strict=True):
        split = load_cached_eval(cfg, tokenizer, path, log)
        examples[name], stats[name] = split.eval, split.eval_stats
        records += split.eval_records
    return examples, stats, records
