"""Tokenize once, map it: the examples of a data file (every stage's: sft / pretrain samples here, the other
builders' kinds in data.stage_cache) come from a memory-mapped token cache (data.token_store) built in one
streaming pass that also runs the record check (file:line errors, exit 2, nothing written), with a progress
bar and a tokens/s rate. The cache lives in $TUNEFORGE_HOME/data/<key>, keyed by the file's sha256, the
tokenizer (vocabulary, merges, special tokens, chat template), the data keys that change tokenization
(format, template, system prompt, fields, ...), max_length and the over-length policy; a second run, a
resume, an hpo trial or a `compare` method reuses it and says so.

    examples, stats, n_records = load_cached_examples(cfg, tokenizer, cfg.data.train, log)
    examples[i]            # an Example read from the map (lists of ints), as the training loop indexes it
    reader, meta = open_cache(cfg, tokenizer, path, log, kind)   # any example kind (data.stage_cache's)
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from tuneforge.config.schema import Config
from tuneforge.data.cache_admin import evict, hold, max_bytes_from_env
from tuneforge.data.cache_keys import (  # noqa: F401 (data_cache_dir, file_sha256: re-exported)
    cache_key,
    data_cache_dir,
    file_sha256,
)
from tuneforge.data.dataset import DataStats, check_stream, record_examples
from tuneforge.data.formats import detect_format
from tuneforge.data.load import BadLine, Item, Record, iter_records
from tuneforge.data.records import fields_of, view_record
from tuneforge.data.templates import IGNORE, Example
from tuneforge.data.token_store import TokenReader, TokenWriter
from tuneforge.errors import DataError
from tuneforge.fsutil import make_temp_dir, write_json_atomic
from tuneforge.stage_info import stage_info


class CachedExamples(Sequence):
    """Examples read from a token cache by position (the loop's train_examples[i]); `index` selects a subset
    (the train part when data.eval_split holds records out); `read(reader, j)` builds example j (default:
    an sft / pretrain Example)."""

    def __init__(self, reader: TokenReader, index: np.ndarray | None = None,
                 read: Callable[[TokenReader, int], object] | None = None):
        self.reader, self.index, self.read_example = reader, index, read or read_lm

    def __len__(self) -> int:
        return len(self.reader) if self.index is None else len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.read_example(self.reader, int(self.index[i]) if self.index is not None else int(i))

    def lengths(self) -> np.ndarray:
        lengths = self.reader.lengths()
        return lengths if self.index is None else lengths[self.index]

    def supervised(self) -> np.ndarray:
        """Supervised tokens of each example (reads the whole mask once)."""
        r = self.reader
        counts = (self.reader.lengths() if r.mask_array is None
                  else np.add.reduceat(np.asarray(r.mask_array, dtype=np.int64), r.offsets[:-1]))
        return counts if self.index is None else counts[self.index]


def _progress(path: Path, enabled: bool) -> Progress:
    return Progress(TextColumn(f"[bold]tokenizing {path.name}"), BarColumn(), DownloadColumn(),
                    TextColumn("{task.fields[tokens]:,} tokens, {task.fields[rate]:,.0f} tok/s"),
                    TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)


COUNTERS = ("truncated", "dropped_overlength", "dropped_identical", "dropped_no_supervised", "split_chunks",
            "corpus_tokens")  # kept per record too, so a part of the file (eval_split) has its own exact counts


def read_lm(reader: TokenReader, j: int) -> Example:
    ids = reader.tokens(j).tolist()
    mask = reader.mask(j)
    labels = list(ids) if mask is None else [t if m else IGNORE for t, m in zip(ids, mask.tolist(), strict=True)]
    return Example(ids, labels)


class LmKind:
    """sft / pretrain samples (data.dataset.record_examples): token ids and, for sft, the supervised mask.
    The interface every cached example kind has (data.stage_cache has the others)."""

    def __init__(self, cfg: Config, tokenizer):
        self.cfg, self.tokenizer, self.formats = cfg, tokenizer, set()
        self.pretrain = stage_info(cfg.stage).records == "pretrain"
        self.read = read_lm

    def key(self) -> dict:
        return {}

    def writer(self, directory: Path) -> TokenWriter:
        return TokenWriter(directory, len(self.tokenizer), with_mask=not self.pretrain)

    def new_stats(self, path: Path) -> DataStats:  # a build begins
        self.formats = set()
        return DataStats(path=str(path), format=self.cfg.data.format)

    def add(self, record: Record, n: int, stats: DataStats, writer: TokenWriter) -> None:
        if self.pretrain and n == 0:
            detect_format(record, "pretrain", self.cfg.data.text_field)  # names the missing field up front
        for example in record_examples(self.cfg, self.tokenizer, record, stats, self.formats):
            mask = None if self.pretrain else [int(t != IGNORE) for t in example.labels]
            writer.add(example.input_ids, mask, record=n)

    def close(self, directory: Path, path: Path, stats: DataStats, n_examples: int) -> None:
        stats.examples, stats.format = n_examples, "+".join(sorted(self.formats)) or "text"
        if not n_examples:
            raise DataError(f"{path}: no usable samples: {stats.records} records, {stats.dropped_overlength} "
                            f"over max_length, {stats.dropped_no_supervised} with no supervised tokens")


def _counts(stats) -> list[int]:
    return [getattr(stats, name, 0) for name in COUNTERS]


def build_cache(cfg: Config, tokenizer, path: Path, dest: Path, parts: dict, log: Callable[[str], None],
                kind=None) -> None:
    """One streaming pass over `path`: every item goes through the stage's check (check_stream), each valid
    record is turned into examples by `kind` (default LmKind) and appended to the map. Errors: DataError after
    the whole file was read (every bad line at once), and nothing is left behind."""
    kind = kind or LmKind(cfg, tokenizer)
    records_kind, fields = stage_info(cfg.stage).records, fields_of(cfg)
    stats = kind.new_stats(path)
    tmp = make_temp_dir(dest.parent, f".{dest.name}.")
    started = time.perf_counter()
    state = {"bytes": 0, "records": 0, "failed": False}
    per_record = array("i")  # COUNTERS' change at each record (24 bytes a record)

    try:
        with _progress(path, cfg.training.progress) as bar, kind.writer(tmp) as writer:

            def tokens() -> int:  # the corpus's tokens (sft / pretrain), else the main ids written
                return getattr(stats, "corpus_tokens", 0) or writer.offsets[-1]

            task = bar.add_task("tokenize", total=path.stat().st_size, tokens=0, rate=0.0)

            def on_bytes(n: int) -> None:
                state["bytes"] += n

            def stream() -> Iterator[Item]:
                for item in iter_records(path, on_bytes):
                    yield item  # the check has seen it when the next one is asked for
                    if isinstance(item, BadLine):
                        state["failed"] = True
                        continue
                    state["records"] += 1
                    issues = view_record(item.data, records_kind, fields)[1]
                    if state["failed"] or any(i.kind != "chosen_equals_rejected" for i in issues):  # (builders drop)
                        state["failed"] = True  # an error is certain: read on only to report every bad line
                        continue
                    before = _counts(stats)
                    kind.add(item, state["records"] - 1, stats, writer)
                    per_record.extend(a - b for a, b in zip(_counts(stats), before, strict=True))
                    if state["records"] % 512 == 0:
                        rate = tokens() / max(time.perf_counter() - started, 1e-9)
                        bar.update(task, completed=state["bytes"], tokens=tokens(), rate=rate)
                bar.update(task, completed=path.stat().st_size, tokens=tokens(),
                           rate=tokens() / max(time.perf_counter() - started, 1e-9))

            check_stream(cfg, path, stream(), log)
            if state["failed"]:  # the check found what tokenizing could not (should not happen)
                raise DataError(f"{path}: unusable records")
            kind.close(tmp, path, stats, len(writer))
            n_tokens = tokens()
        np.save(tmp / "record_counts.npy", np.frombuffer(per_record, dtype=np.int32).reshape(-1, len(COUNTERS)))
        seconds = time.perf_counter() - started
        meta = {"parts": parts, "stats": {k: v for k, v in vars(stats).items() if k != "lengths"},
                "records": state["records"], "tokens": n_tokens, "build_seconds": round(seconds, 2),
                "tokens_per_second": round(n_tokens / max(seconds, 1e-9)), "created": time.time()}
        write_json_atomic(tmp / "meta.json", meta)
        try:
            tmp.rename(dest)
        except OSError:  # another process built the same key meanwhile: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_cache(cfg: Config, tokenizer, path: str | Path, log: Callable[[str], None] = print,
               kind=None) -> tuple[TokenReader, dict]:
    """(the memory-mapped cache of `path` for `kind`'s examples, its meta.json), built now unless present."""
    path = Path(path)
    iter_records(path)  # a missing or unreadable file: DataError naming it, before hashing
    kind = kind or LmKind(cfg, tokenizer)
    cap = max_bytes_from_env()  # $TUNEFORGE_DATA_CACHE_MAX_GB, checked before a long build
    key, parts = cache_key(cfg, tokenizer, path, kind.key())
    dest = data_cache_dir() / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One builder per key: the ranks of a torchrun job, parallel hpo trials or compare runs wait for it and reuse.
    with open(dest.parent / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / "meta.json").is_file():
            meta = json.loads((dest / "meta.json").read_text())
            log(f"data cache: reused {dest} for {path} (no tokenizing; built in {meta['build_seconds']} s at "
                f"{meta['tokens_per_second']:,} tok/s)")
        else:
            log(f"data cache: tokenizing {path} into {dest} (once; later runs reuse it)")
            build_cache(cfg, tokenizer, path, dest, parts, log, kind)
            meta = json.loads((dest / "meta.json").read_text())
            log(f"data cache: built {dest}: {meta['tokens']:,} tokens of {meta['records']:,} records "
                f"in {meta['build_seconds']} s ({meta['tokens_per_second']:,} tok/s)")
            evict(dest.parent, cap, keep=dest, log=log)  # least recently used first, never one in use
        in_use = hold(dest)  # a shared lock: no clear or eviction removes it while this reader lives
    reader = TokenReader(dest)
    reader.in_use = in_use
    return reader, meta


def load_cached_examples(cfg: Config, tokenizer, path: str | Path,
                         log: Callable[[str], None] = print) -> tuple[CachedExamples, DataStats, int]:
    """(sft / pretrain examples of `path` from its token cache; their stats; the number of records)."""
    reader, meta = open_cache(cfg, tokenizer, path, log)
    stats = DataStats(**meta["stats"])
    stats.lengths = reader.lengths()
    return CachedExamples(reader), stats, meta["records"]


def records_at(path: str | Path, positions: Sequence[int]) -> list[Record]:
    """The records at `positions` (ordinals among the file's records, sorted), read by streaming the file."""
    wanted, out, k = set(positions), [], -1
    last = max(wanted, default=-1)
    for item in iter_records(path):
        if isinstance(item, Record):
            k += 1
            if k in wanted:
                out.append(item)
            if k >= last:
                break
    return out
