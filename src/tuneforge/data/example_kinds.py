"""The example kinds of the token cache besides sft / pretrain's (token_cache.LmKind): how each builds one
record's examples into a data.token_store directory and reads example j back. Each builds with the builder the
in-memory path uses (classify.cls_record, preference.pair_record, dpo_pairs.dpo_record, kto_rows.kto_record,
rl.prompts.prompt_record), so a cached example equals the in-memory one. data.stage_cache loads them.

    kind = KINDS[stage_info(cfg.stage).examples](cfg, tokenizer)    # installs the run's template first
    reader, meta = token_cache.open_cache(cfg, tokenizer, path, log, kind)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsExample, ClsStats, cls_record, label_order, unknown_label
from tuneforge.data.dpo_pairs import DpoExample, dpo_record
from tuneforge.data.kto_rows import KtoExample, KtoStats, kto_record
from tuneforge.data.load import Record, line_of, where_template
from tuneforge.data.preference import PairExample, PairStats, no_usable, pair_record, use_template
from tuneforge.data.token_cache import LmKind
from tuneforge.data.token_store import TokenReader, TokenWriter
from tuneforge.errors import DataError
from tuneforge.rl.prompts import PromptExample, PromptStats, no_usable_prompts, prompt_budget, prompt_record


def _pairs(a: np.ndarray, b: np.ndarray) -> list[int]:
    return np.stack([a, b], axis=1).ravel().tolist()


class _Kind:
    """What the non-lm kinds share: the run's template installed first (it is part of the tokenizer's key), one
    record's example from the kind's `build` (None: dropped), written as `parts(example)` lays it out."""

    stats_class: type = PairStats
    what = "preference pairs"
    fields: tuple[str, ...] = ()  # token fields besides the main tokens
    byte_fields: tuple[str, ...] = ()
    scalars: tuple[str, ...] = ()
    build: Callable = staticmethod(pair_record)

    def __init__(self, cfg: Config, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.templated = use_template(cfg, tokenizer)

    def key(self) -> dict:
        return {}

    def new_stats(self, path: Path):
        return self.stats_class()

    def writer(self, directory: Path) -> TokenWriter:
        return TokenWriter(directory, len(self.tokenizer), fields=self.fields, byte_fields=self.byte_fields,
                           scalars=self.scalars)

    def add(self, record: Record, n: int, stats, writer: TokenWriter) -> None:
        example = self.build(self.cfg, self.tokenizer, record, self.templated, stats)
        if example is not None:
            main, extra = self.parts(example)
            writer.add(main, record=n, **extra)

    def close(self, directory: Path, path: Path, stats, n_examples: int) -> None:
        self.finish(stats, n_examples)
        if not n_examples:
            raise self.empty(str(path), stats)

    def finish(self, stats, n_examples: int) -> None:
        setattr(stats, "pairs" if isinstance(stats, PairStats) else "examples", n_examples)

    def empty(self, where: str, stats) -> DataError:
        return no_usable(where, self.what, stats)

    def reader_for(self, labels):
        return self.read


class PairKind(_Kind):
    """Reward pairs: the chosen conversation's ids (the main tokens) and the rejected one's."""

    fields = ("rejected",)

    @staticmethod
    def parts(pair: PairExample) -> tuple[list[int], dict]:
        return pair.chosen.input_ids, {"rejected": pair.rejected.input_ids}

    @staticmethod
    def read(reader: TokenReader, j: int) -> PairExample:
        return PairExample(ClsExample(reader.tokens(j).tolist(), None, 0),
                           ClsExample(reader.field("rejected", j).tolist(), None, 0))

    def lengths(self, reader: TokenReader, index: np.ndarray) -> list[int]:
        return _pairs(reader.lengths()[index], reader.lengths("rejected")[index])


class DpoKind(_Kind):
    """DPO pairs (orpo / simpo / cpo too): the prompt's ids (the main tokens), then each response's."""

    fields, build = ("chosen", "rejected"), staticmethod(dpo_record)

    @staticmethod
    def parts(pair: DpoExample) -> tuple[list[int], dict]:
        return pair.prompt_ids, {"chosen": pair.chosen_ids, "rejected": pair.rejected_ids}

    @staticmethod
    def read(reader: TokenReader, j: int) -> DpoExample:
        return DpoExample(reader.tokens(j).tolist(), reader.field("chosen", j).tolist(),
                          reader.field("rejected", j).tolist())

    def lengths(self, reader: TokenReader, index: np.ndarray) -> list[int]:
        prompt = reader.lengths()[index]
        return _pairs(prompt + reader.lengths("chosen")[index], prompt + reader.lengths("rejected")[index])


class KtoKind(_Kind):
    """KTO rows: the prompt's ids, the completion's, the label (1: desirable)."""

    stats_class, what, build = KtoStats, "kto rows", staticmethod(kto_record)
    fields, scalars = ("completion",), ("label",)

    @staticmethod
    def parts(row: KtoExample) -> tuple[list[int], dict]:
        return row.prompt_ids, {"completion": row.completion_ids, "label": row.label}

    @staticmethod
    def read(reader: TokenReader, j: int) -> KtoExample:
        return KtoExample(reader.tokens(j).tolist(), reader.field("completion", j).tolist(),
                          bool(reader.scalar("label")[j]))

    def lengths(self, reader: TokenReader, index: np.ndarray) -> list[int]:
        return (reader.lengths()[index] + reader.lengths("completion")[index]).tolist()

    def part_stats(self, stats, reader: TokenReader, index: np.ndarray) -> None:
        stats.desirable = int(np.asarray(reader.scalar("label"))[index].sum())


class PromptKind(_Kind):
    """RL prompts: the ids the policy continues (the main tokens) and the row's other parts as JSON (the
    prompt, the rendered text, the columns reward functions read, file:line)."""

    stats_class, byte_fields, build = PromptStats, ("row",), staticmethod(prompt_record)

    def key(self) -> dict:
        return {"prompt_budget": prompt_budget(self.cfg)}

    def new_stats(self, path: Path) -> PromptStats:
        return PromptStats(templated=self.templated)

    @staticmethod
    def parts(e: PromptExample) -> tuple[list[int], dict]:
        # JSON holds what a JSONL / CSV record holds; a Parquet date or bytes value becomes text (default=str)
        row = json.dumps([e.prompt, e.text, e.columns, e.where], ensure_ascii=False, default=str)
        return e.input_ids, {"row": row.encode()}

    def empty(self, where: str, stats) -> DataError:
        return no_usable_prompts(where, stats)

    @staticmethod
    def read(reader: TokenReader, j: int) -> PromptExample:
        prompt, text, columns, where = json.loads(reader.field("row", j).tobytes())
        return PromptExample(prompt, text, reader.tokens(j).tolist(), columns, where)


class ClassifyKind(_Kind):
    """Classify texts: the ids, the token type ids (encoders), the label as a code into the labels seen; per
    record the label code and line, so a part's label set and an unknown label's file:line are exact."""

    stats_class, fields, scalars = ClsStats, ("types",), ("label", "typed")

    def __init__(self, cfg: Config, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer

    def new_stats(self, path: Path) -> ClsStats:  # a build begins: its own label codes and record lists
        self.codes: dict[str, int] = {}
        self.record_label: list[int] = []
        self.record_line: list[int] = []
        self.first_where = ""
        return ClsStats()

    def add(self, record: Record, n: int, stats, writer: TokenWriter) -> None:
        label, ids, types = cls_record(self.cfg, self.tokenizer, record, stats)
        code = self.codes.setdefault(label, len(self.codes))
        self.first_where = self.first_where or record.where
        self.record_label.append(code)
        self.record_line.append(line_of(record.where))
        if ids is not None:
            writer.add(ids, record=n, types=types or [], label=code, typed=types is not None)

    def close(self, directory: Path, path: Path, stats, n_examples: int) -> None:
        super().close(directory, path, stats, n_examples)
        np.save(directory / "record_label.npy", np.asarray(self.record_label, dtype=np.int64))
        np.save(directory / "record_line.npy", np.asarray(self.record_line, dtype=np.int64))
        first = {"labels": list(self.codes), "first_where": self.first_where}
        (directory / "labels.json").write_text(json.dumps(first))

    def empty(self, where: str, stats) -> DataError:
        return DataError(f"{where}: no usable samples (all dropped as over length)")

    def labels(self, reader: TokenReader, records: np.ndarray | None) -> list[str]:
        """The run's label order from the labels of `records` (the train part)."""
        names = json.loads((reader.dir / "labels.json").read_text())["labels"]
        codes = np.load(reader.dir / "record_label.npy")
        return label_order(self.cfg, {names[c] for c in np.unique(codes if records is None else codes[records])})

    def check(self, reader: TokenReader, records: np.ndarray | None, labels: list[str]) -> np.ndarray:
        """code -> label id of the run; a label outside `labels` is an error naming its first record."""
        meta = json.loads((reader.dir / "labels.json").read_text())
        index = {label: i for i, label in enumerate(labels)}
        remap = np.array([index.get(name, -1) for name in meta["labels"]], dtype=np.int64)
        codes = np.load(reader.dir / "record_label.npy")
        part = np.arange(len(codes)) if records is None else records
        bad = part[remap[codes[part]] < 0]
        if len(bad):
            line = int(np.load(reader.dir / "record_line.npy")[bad[0]])
            raise unknown_label(where_template(meta["first_where"])(line), meta["labels"][codes[bad[0]]], labels)
        return remap

    def reader_for(self, remap: np.ndarray):
        def read(reader: TokenReader, j: int) -> ClsExample:
            typed = bool(reader.scalar("typed")[j])
            return ClsExample(reader.tokens(j).tolist(), reader.field("types", j).tolist() if typed else None,
                              int(remap[reader.scalar("label")[j]]))
        return read

    def lengths(self, reader: TokenReader, index: np.ndarray) -> list[int]:
        return reader.lengths()[index].tolist()


KINDS: dict[str, Callable[[Config, object], object]] = {
    "lm": LmKind, "classify": ClassifyKind, "scored_pairs": PairKind, "dpo_pairs": DpoKind, "kto_rows": KtoKind,
    "prompts": PromptKind,
}
