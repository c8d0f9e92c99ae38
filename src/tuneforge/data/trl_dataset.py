"""The `datasets.Dataset` TRL's trainers take (dpo, orpo / simpo / cpo, kto, grpo), backed by an Arrow file on
disk and memory-mapped: written once per token-cache entry by streaming the cached examples through the
library's own ArrowWriter (a batch of rows in memory at a time, never a list of every row), opened with
`Dataset.from_file`, and reused by the next run that asks for the same rows (logged, like the token cache).

    dataset = trl_dataset(data.train, "dpo", lambda: (e.row() for e in data.train), log)
    dataset.cache_files          # [{"filename": "<cache entry>/trl-dpo-<hash>.arrow"}]

The file lives in the token cache's entry of the train file (data.token_cache), so `tuneforge data cache`
counts it and clears it with the entry, and the entry's `.use` hold keeps it while the run reads it. Its name
hashes the row layout, its parameters (kto: batch size and seed), the examples' index (data.eval_split's train
part) and the source of the module that lays the rows out, so a change to any of them writes a new file.
Examples built in memory (a list, as tests build them) become `Dataset.from_list` as before.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from tuneforge.fsutil import make_temp_dir

WRITER_BATCH = 1000  # rows the ArrowWriter holds before writing a record batch


def _features(row: dict):
    """The Arrow schema of the rows: token-id lists as int32 lists, flags, integers and strings as they are."""
    from datasets import Features, List, Value

    def one(key: str, value):
        if isinstance(value, bool):
            return Value("bool")
        if isinstance(value, int):
            return Value("int64")
        if isinstance(value, str):
            return Value("string")
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            return List(Value("int32"))
        raise TypeError(f"trl_dataset: column {key!r} holds {type(value).__name__}, not ids, int, bool or str")

    return Features({key: one(key, value) for key, value in row.items()})


def arrow_path(examples, layout: str, rows: Callable, params: dict | None = None) -> Path:
    """Where the rows of `examples` (a token_cache.CachedExamples) in `layout` are kept."""
    index = getattr(examples, "index", None)
    digest = hashlib.sha256(json.dumps({"layout": layout, "params": params or {}}, sort_keys=True).encode())
    digest.update(b"all" if index is None else np.ascontiguousarray(index, dtype=np.int64).tobytes())
    source = inspect.getsourcefile(rows)
    digest.update(Path(source).read_bytes() if source and Path(source).is_file() else layout.encode())
    return Path(examples.reader.dir) / f"trl-{layout}-{digest.hexdigest()[:16]}.arrow"


def _write(path: Path, rows: Iterable[dict]) -> int:
    """Stream `rows` into an Arrow file at `path` (written beside it, then moved in place); the row count."""
    from datasets.arrow_writer import ArrowWriter

    tmp_dir = make_temp_dir(path.parent, f".{path.stem}.")
    tmp = tmp_dir / path.name
    writer, n = None, 0
    try:
        for row in rows:
            if writer is None:
                writer = ArrowWriter(features=_features(row), path=str(tmp), writer_batch_size=WRITER_BATCH)
            writer.write(row)
            n += 1
        if writer is None:
            raise ValueError(f"trl_dataset: no rows to write to {path}")
        writer.finalize()
        writer.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        tmp_dir.rmdir()
    return n


def trl_dataset(examples: Sequence, layout: str, rows: Callable[[], Iterable[dict]],
                log: Callable[[str], None] = print, params: dict | None = None):
    """A `datasets.Dataset` of `rows()` (rows of `examples`, in the order the trainer reads them): from the
    Arrow file of the examples' cache entry, memory-mapped, written now unless an earlier run wrote it."""
    from datasets import Dataset

    if getattr(examples, "reader", None) is None:  # built in memory (tests): already a list
        return Dataset.from_list(list(rows()))
    path = arrow_path(examples, layout, rows, params)
    with open(path.parent / ".trl.lock", "w") as lock:  # one writer per entry (parallel trials, compare runs)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            log(f"data cache: reused {path} for the {layout} trainer (Arrow, memory-mapped; not rebuilt)")
        else:
            started = time.perf_counter()
            n = _write(path, rows())
            log(f"data cache: wrote {n:,} {layout} rows to {path} in {time.perf_counter() - started:.1f} s "
                "(Arrow, memory-mapped; later runs reuse it)")
    return Dataset.from_file(str(path))


class Column(Sequence):
    """One attribute of every example, read by index when asked (grpo's prompt ids), not copied into a list."""

    def __init__(self, examples: Sequence, name: str):
        self.examples, self.name = examples, name

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return getattr(self.examples[i], self.name)
