"""Read records from local JSONL / JSON / CSV / Parquet. Every error names the file and line (or row).

    records = load_records("data/train.jsonl")   # -> list[Record]
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import DataError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Record:
    data: dict[str, Any]
    where: str  # "file:line" (JSONL/CSV) or "file:row N" (JSON/Parquet), for error messages


def _jsonl(path: Path) -> list[Record]:
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
            out.append(Record(obj, f"{path}:{lineno}"))
    return out


def _json(path: Path) -> list[Record]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    out = []
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise DataError(f"{path}: row {i}: expected an object, got {type(item).__name__}")
        out.append(Record(item, f"{path}: row {i}"))
    return out


def _csv(path: Path) -> list[Record]:
    out = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            return []
        for row in reader:
            if None in row:
                raise DataError(f"{path}:{reader.line_num}: more values than the {len(reader.fieldnames)} header columns")
            out.append(Record(dict(row), f"{path}:{reader.line_num}"))
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
