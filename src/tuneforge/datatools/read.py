"""Stream records from a data file one at a time, turning a bad line into a `BadLine` instead of an
exception, so a check can report every problem and memory does not grow with the file.

    for item in iter_records("data/train.jsonl"):   # Record | BadLine
        ...

JSONL and CSV stream line by line, Parquet by row batches; a JSON array file is read whole (the
format has no record boundaries to stream on).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.load import (
    ENCODING,
    JSON_ERRORS,
    SURROGATE_PROBLEM,
    Record,
    file_kind,
    json_problem,
    lone_surrogate,
)
from tuneforge.errors import DataError


@dataclass(frozen=True)
class BadLine:
    where: str  # "file:line"
    kind: str  # malformed_json | not_object | not_utf8 | bad_csv_row
    message: str


Item = Record | BadLine
_LINE = re.compile(r"(?::| row )(\d+)$")


def line_of(where: str) -> int:
    """The line (JSONL/CSV) or row (JSON/Parquet) number at the end of a `where` string, else 0."""
    m = _LINE.search(where)
    return int(m.group(1)) if m else 0


def where_template(first_where: str) -> Callable[[int], str]:
    """Rebuild "file:N" (or "file: row N") for any N from one record's location: stores ints, not strings."""
    if not _LINE.search(first_where):
        return lambda n: first_where
    return lambda n: _LINE.sub(lambda m: m.group().replace(m.group(1), str(n)), first_where)


def _jsonl(path: Path, on_bytes: Callable[[int], None] | None = None) -> Iterator[Item]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if on_bytes is not None:
                on_bytes(len(raw))
            where = f"{path}:{lineno}"
            try:
                line = raw.decode(ENCODING if lineno == 1 else "utf-8")  # a byte-order mark only at the start
            except UnicodeDecodeError as exc:
                yield BadLine(where, "not_utf8", f"not UTF-8 text (byte {exc.start} of the line)")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except JSON_ERRORS as exc:
                yield BadLine(where, "malformed_json", f"malformed JSON: {json_problem(exc)}")
                continue
            if isinstance(obj, dict) and lone_surrogate(line, obj):
                yield BadLine(where, "not_utf8", SURROGATE_PROBLEM)
            elif isinstance(obj, dict):
                yield Record(obj, where)
            else:
                yield BadLine(where, "not_object", f"expected a JSON object per line, got {type(obj).__name__}")


def _json(path: Path) -> Iterator[Item]:
    from tuneforge.data.load import load_records

    yield from load_records(path)  # whole file; raises DataError (exit 2) when it does not parse


def _csv(path: Path) -> Iterator[Item]:
    with path.open(encoding=ENCODING, newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row:
                    yield BadLine(where, "bad_csv_row", f"more values than the {len(reader.fieldnames or [])} "
                                                        "header columns")
                else:
                    yield Record(dict(row), where)
        except UnicodeDecodeError as exc:  # CSV cannot resynchronise after a bad byte: stop here
            yield BadLine(f"{path}:{reader.line_num + 1}", "not_utf8", f"not UTF-8 text (byte {exc.start}); "
                                                                       "reading stopped")
        except csv.Error as exc:
            yield BadLine(f"{path}:{reader.line_num}", "bad_csv_row", f"CSV error ({exc}); reading stopped")


def _parquet(path: Path) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: cannot read Parquet ({exc})") from None
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for data in batch.to_pylist():
            yield Record(data, f"{path}: row {row}")
            row += 1


READERS = {"jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet}


def iter_records(path: str | Path, on_bytes: Callable[[int], None] | None = None) -> Iterator[Item]:
    """Records in file order. Raises DataError (exit 2) only when the file itself cannot be read.
    `on_bytes(n)` is told how many bytes each JSONL line had (for a progress bar)."""
    path = Path(path)
    kind = file_kind(path)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    return _jsonl(path, on_bytes) if kind == "jsonl" else READERS[kind](path)
