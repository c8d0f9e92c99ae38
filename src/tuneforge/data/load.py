"""Read records from local JSONL / JSON / CSV / Parquet. Every error names the file and line (or row).

    records = load_records("data/train.jsonl")   # -> list[Record]
"""

from __future__ import annotations

import csv
import json
import re
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
    where: str  # "file:line" (JSONL/CSV) or "file:row N" (JSON/Parquet), for error messages


def _jsonl(path: Path) -> list[Record]:
    out = []
    with path.open(encoding=ENCODING) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except JSON_ERRORS as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({json_problem(exc)})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
            if lone_surrogate(line, obj):
                raise DataError(f"{path}:{lineno}: {SURROGATE_PROBLEM}")
            out.append(Record(obj, f"{path}:{lineno}"))
    return out


def _json(path: Path) -> list[Record]:
    text = path.read_text(encoding=ENCODING)
    try:
        obj = json.loads(text)
    except JSON_ERRORS as exc:
        where = f"{path}:{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(path)
        raise DataError(f"{where}: malformed JSON ({json_problem(exc)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    out = []
    escapes = "\\ud800" if _SURROGATE_ESCAPE.search(text) else ""
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise DataError(f"{path}: row {i}: expected an object, got {type(item).__name__}")
        if lone_surrogate(escapes, item):
            raise DataError(f"{path}: row {i}: {SURROGATE_PROBLEM}")
        out.append(Record(item, f"{path}: row {i}"))
    return out


def _csv(path: Path) -> list[Record]:
    out = []
    with path.open(encoding=ENCODING, newline="") as f:
        reader = csv.DictReader(f)
        try:
            if not reader.fieldnames:
                return []
            for row in reader:
                if None in row:
                    raise DataError(f"{path}:{reader.line_num}: more values than the {len(reader.fieldnames)} "
                                    "header columns")
                out.append(Record(dict(row), f"{path}:{reader.line_num}"))
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return out


def _parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: cannot read Parquet ({exc})") from None
    return [Record(row, f"{path}: row {i}") for i, row in enumerate(rows)]


READERS = {"jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet}


def file_kind(path: Path) -> str:
    """The reader a data file needs (jsonl, json, csv, parquet); a DataError for an unknown type or a missing file."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    return kind


def load_records(path: str | Path) -> list[Record]:
    path = Path(path)
    kind = file_kind(path)
    try:
        records = READERS[kind](path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not records:
        raise DataError(f"{path}: the data set is empty")
    return records
