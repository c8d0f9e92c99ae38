"""Tokenize once, map it: the sft / pretrain examples of a data file come from a memory-mapped token cache
(data.token_store) built in one streaming pass that also runs the record check (file:line errors, exit 2,
nothing written), with a progress bar and a tokens/s rate. The cache lives in $TUNEFORGE_HOME/data/<key>,
keyed by the file's sha256, the tokenizer (vocabulary, merges, special tokens, chat template), the data keys
that change tokenization (format, template, system prompt, fields, ...), max_length and the over-length
policy; a second run, a resume, an hpo trial or a `compare` method reuses it and says so.

    examples, stats, n_records = load_cached_examples(cfg, tokenizer, cfg.data.train, log)
    examples[i]            # an Example read from the map (lists of ints), as the training loop indexes it
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from tuneforge.config.schema import Config
from tuneforge.data.cache_admin import evict, hold, max_bytes_from_env
from tuneforge.data.dataset import DataStats, check_stream, held_out, load_checked_records, record_examples
from tuneforge.data.formats import detect_format
from tuneforge.data.load import BadLine, Item, Record, iter_records
from tuneforge.data.records import fields_of, view_record
from tuneforge.data.templates import IGNORE, Example, control_tokens
from tuneforge.data.token_store import TokenReader, TokenWriter
from tuneforge.errors import DataError
from tuneforge.fsutil import make_temp_dir, write_json_atomic
from tuneforge.models.hub import tuneforge_home
from tuneforge.stage_info import stage_info

CACHE_VERSION = 1  # bump when what a cache holds or how examples are built changes
# data keys that never change one record's tokens (the files are keyed by content; the split comes after)
NOT_TOKENIZATION = ("train", "eval", "eval_split", "labels")


def data_cache_dir() -> Path:
    """$TUNEFORGE_DATA_CACHE if set (the tests point it at a temporary folder), else $TUNEFORGE_HOME/data."""
    override = os.environ.get("TUNEFORGE_DATA_CACHE")
    return Path(override) if override else tuneforge_home() / "data"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides the ids: the fast tokenizer's whole serialization (vocabulary, merges,
    normalizer, pre-tokenizer; a slow one's vocabulary), its special tokens, BOS/EOS and chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None
                  else json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps([type(tokenizer).__name__, tokenizer.chat_template, tokenizer.bos_token_id,
                              tokenizer.eos_token_id, getattr(tokenizer, "add_bos_token", False),
                              control_tokens(tokenizer)], default=str).encode())
    return digest.hexdigest()


def code_fingerprint() -> str:
    """sha256 of the data package's source: a change to how examples are built (templates, formats, label
    masks) rebuilds the caches instead of serving old tokens."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()


def cache_key(cfg: Config, tokenizer, path: str | Path) -> tuple[str, dict]:
    """(directory name, the parts it hashes). Every data key except the file names and the split is a part,
    so a key added later can only cause a rebuild, never a stale cache."""
    info = stage_info(cfg.stage)
    parts = {"version": CACHE_VERSION, "code": code_fingerprint(), "data_sha256": file_sha256(path),
             "tokenizer": tokenizer_fingerprint(tokenizer),
             "records": info.records, "examples": info.examples,
             "data": {k: v for k, v in cfg.data.model_dump().items() if k not in NOT_TOKENIZATION},
             "max_length": cfg.training.max_length, "overlength": cfg.training.overlength}
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32], parts


class CachedExamples(Sequence):
    """Examples read from a token cache by position (the loop's train_examples[i]); `index` selects a subset
    (the train part when data.eval_split holds records out)."""

    def __init__(self, reader: TokenReader, index: np.ndarray | None = None):
        self.reader, self.index = reader, index

    def __len__(self) -> int:
        return len(self.reader) if self.index is None else len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = int(self.index[i]) if self.index is not None else int(i)
        ids = self.reader.tokens(j).tolist()
        mask = self.reader.mask(j)
        labels = list(ids) if mask is None else [t if m else IGNORE for t, m in zip(ids, mask.tolist(), strict=True)]
        return Example(ids, labels)

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


def build_cache(cfg: Config, tokenizer, path: Path, dest: Path, parts: dict, log: Callable[[str], None]) -> None:
    """One streaming pass over `path`: every item goes through the stage's check (check_stream), each valid
    record is tokenized (data.dataset.record_examples) and appended to the map. Errors: DataError after the
    whole file was read (every bad line at once), and nothing is left behind."""
    kind, fields = stage_info(cfg.stage).records, fields_of(cfg)
    stats, formats = DataStats(path=str(path), format=cfg.data.format), set()
    tmp = make_temp_dir(dest.parent, f".{dest.name}.")
    started = time.perf_counter()
    state = {"bytes": 0, "records": 0, "failed": False}
    try:
        with _progress(path, cfg.training.progress) as bar, \
                TokenWriter(tmp, len(tokenizer), with_mask=kind != "pretrain") as writer:
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
                    if state["failed"]:
                        continue  # an error is certain: read on only to report every bad line
                    _tokenize(cfg, tokenizer, item, kind, fields, stats, formats, writer, state)
                    if state["records"] % 512 == 0:
                        rate = stats.corpus_tokens / max(time.perf_counter() - started, 1e-9)
                        bar.update(task, completed=state["bytes"], tokens=stats.corpus_tokens, rate=rate)
                rate = stats.corpus_tokens / max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=path.stat().st_size, tokens=stats.corpus_tokens, rate=rate)

            check_stream(cfg, path, stream(), log)
            if state["failed"]:  # the check found what tokenizing could not (should not happen)
                raise DataError(f"{path}: unusable records")
            stats.examples, stats.format = len(writer), "+".join(sorted(formats)) or "text"
            if not stats.examples:
                raise DataError(f"{path}: no usable samples: {stats.records} records, {stats.dropped_overlength} "
                                f"over max_length, {stats.dropped_no_supervised} with no supervised tokens")
        seconds = time.perf_counter() - started
        meta = {"parts": parts, "stats": {k: v for k, v in vars(stats).items() if k != "lengths"},
                "records": state["records"], "build_seconds": round(seconds, 2),
                "tokens_per_second": round(stats.corpus_tokens / max(seconds, 1e-9)), "created": time.time()}
        write_json_atomic(tmp / "meta.json", meta)
        try:
            tmp.rename(dest)
        except OSError:  # another process built the same key meanwhile: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tokenize(cfg: Config, tokenizer, record: Record, kind: str, fields, stats: DataStats, formats: set[str],
              writer: TokenWriter, state: dict) -> None:
    view, issues = view_record(record.data, kind, fields)
    if issues:
        state["failed"] = True  # check_records reports it with its line
        return
    if kind == "pretrain" and state["records"] == 1:
        detect_format(record, "pretrain", cfg.data.text_field)  # names the missing field up front
    for example in record_examples(cfg, tokenizer, record, stats, formats):
        mask = None if kind == "pretrain" else [int(t != IGNORE) for t in example.labels]
        writer.add(example.input_ids, mask, record=state["records"] - 1)


def load_cached_examples(cfg: Config, tokenizer, path: str | Path,
                         log: Callable[[str], None] = print) -> tuple[CachedExamples, DataStats, int]:
    """(examples of `path` from its token cache, built now unless present; their stats; the number of records)."""
    path = Path(path)
    iter_records(path)  # a missing or unreadable file: DataError naming it, before hashing
    cap = max_bytes_from_env()  # $TUNEFORGE_DATA_CACHE_MAX_GB, checked before a long build
    key, parts = cache_key(cfg, tokenizer, path)
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
            build_cache(cfg, tokenizer, path, dest, parts, log)
            meta = json.loads((dest / "meta.json").read_text())
            log(f"data cache: built {dest}: {meta['stats']['corpus_tokens']:,} tokens of {meta['records']:,} records "
                f"in {meta['build_seconds']} s ({meta['tokens_per_second']:,} tok/s)")
            evict(dest.parent, cap, keep=dest, log=log)  # least recently used first, never one in use
        in_use = hold(dest)  # a shared lock: no clear or eviction removes it while this reader lives
    reader = TokenReader(dest)
    reader.in_use = in_use
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


def load_cached_train_eval(cfg: Config, tokenizer, log: Callable[[str], None] = print
                           ) -> tuple[CachedExamples, DataStats, list[Record]]:
    """The lm stages' train examples from the cache of data.train, and the checked eval records (data.eval, or
    the records data.eval_split holds out of train, read back from the file). The eval records stay records:
    the eval set is small and generation items need their text. With eval_split, the train stats' counts of
    examples and tokens are the train part's; the over-length counts (truncated, dropped) the whole file's."""
    train, stats, n_records = load_cached_examples(cfg, tokenizer, cfg.data.train, log)
    if isinstance(cfg.data.eval, str):
        return train, stats, load_checked_records(cfg, cfg.data.eval, log)
    if cfg.data.eval_split <= 0 or cfg.data.eval:  # several eval sources: data.mixing reads them
        return train, stats, []
    held = np.array(sorted(held_out(n_records, cfg.data.eval_split, cfg.seed)), dtype=np.int64)
    reader = train.reader
    index = np.flatnonzero(~np.isin(reader.records, held))
    train = CachedExamples(reader, index)
    lengths = reader.lengths()
    stats.records, stats.examples = n_records - len(held), len(index)
    stats.lengths = lengths[index]
    stats.tokens = int(stats.lengths.sum())
    stats.corpus_tokens -= int(lengths.sum()) - stats.tokens  # the held records' (exact unless they were cut)
    stats.supervised_tokens = int(train.supervised().sum())
    return train, stats, records_at(cfg.data.train, held.tolist())
