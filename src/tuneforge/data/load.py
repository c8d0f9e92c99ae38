"""The one reader of data files (JSONL / JSON / CSV / Parquet): records stream one at a time, a bad line
becomes a `BadLine` (so a check can report every problem and memory does not grow with the file), and every
location names the file and line (or row).

    for item in iter_records("data/train.jsonl"):   # Record | BadLine, in file order
        ...
    records = load_records("data/train.jsonl")      # list[Record]; DataError at the first bad line

JSONL and CSV stream line by line, Parquet by row batches; a JSON array file is read whole (the format has
no record boundaries to stream on).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import DataError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ENCODING = "utf-8-sig"  # UTF-8; a leading byte-order mark (Excel, Notepad) is skipped, not read as data
# json.loads fails with JSONDecodeError (a ValueError), a plain ValueError for integers over Python's
# 4300-digit limit, and RecursionError for arrays nested deeper than the recursion limit.
JSON_ERRORS = (ValueError, RecursionError)
# The csv module refuses fields over 128 KiB by default; a pretraining document is often longer.
csv.field_size_limit(2**31 - 1)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def lone_surrogate(text: str, obj: Any) -> bool:
    """True when JSON `text` decoded to `obj` holding a string with an unpaired UTF-16 surrogate (a `\\ud800`
    escape): not Unicode text; the tokenizer and every UTF-8 writer fail on it. `text` is only searched for
    such an escape, which keeps the check cheap (pass "\\ud800" when the caller searched already)."""
    if not _SURROGATE_ESCAPE.search(text):
        return False
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


SURROGATE_PROBLEM = "a string holds an unpaired UTF-16 surrogate (a \\udXXX escape), which is not text"


def json_problem(exc: BaseException) -> str:
    """What was wrong with a line of JSON, for a message that already names the file and line."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return "a number too long to read" if "digits" in str(exc) else str(exc)


@dataclass(frozen=True)
class Record:
    data: dict[str, Any]
    where: str  # "file:line" (JSONL/CSV) or "file: row N" (JSON/Parquet), for error messages


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


def _json(path: Path, on_bytes=None) -> Iterator[Item]:
    """The whole file at once (a JSON array has no record boundaries); a file that does not parse is a
    DataError (exit 2), a row that is not an object a BadLine."""
    try:
        text = path.read_text(encoding=ENCODING)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except JSON_ERRORS as exc:
        where = f"{path}:{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(path)
        raise DataError(f"{where}: malformed JSON ({json_problem(exc)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    escapes = "\\ud800" if _SURROGATE_ESCAPE.search(text) else ""
    for i, item in enumerate(obj):
        where = f"{path}: row {i}"
        if not isinstance(item, dict):
            yield BadLine(where, "not_object", f"expected an object, got {type(item).__name__}")
        elif lone_surrogate(escapes, item):
            yield BadLine(where, "not_utf8", SURROGATE_PROBLEM)
        else:
            yield Record(item, where)


def _csv(path: Path, on_bytes=None) -> Iterator[Item]:
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


def _parquet(path: Path, on_bytes=None) -> Iterator[Item]:
    import pyarrow.parquet as pq

    row = 0
    try:  # pyarrow raises several types for a broken file, on opening or on a later batch
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for data in batch.to_pylist():
                yield Record(data, f"{path}: row {row}")
                row += 1
    except Exception as exc:
        raise DataError(f"{path}: cannot read Parquet ({exc})") from None


READERS = {"jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet}


def file_kind(path: Path) -> str:
    """The reader a data file needs (jsonl, json, csv, parquet); a DataError for an unknown type or a missing file."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    return kind


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
    return READERS[kind](path, on_bytes)


def load_records(path: str | Path) -> list[Record]:
    """Every record of `path` in a list; the first bad line is a DataError naming it (the stages read through
    data.dataset.load_checked_records instead, which reports every bad line at once)."""
    records = []
    for item in iter_records(path):
        if isinstance(item, BadLine):
            raise DataError(f"{item.where}: {item.message}")
        records.append(item)
    if not records:
        raise DataError(f"{path}: the data set is empty")
    return records
