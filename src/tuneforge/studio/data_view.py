"""A data file as the new-run form shows it before anything trains: the first rows, the format each record was
read as, and `tuneforge data check`'s findings (datatools.check.check_records, the checks training runs) with
their file:line locations. No tokenizer is loaded: token lengths are `tuneforge validate`'s and training's.

    view = preview_data("data/train.jsonl", "sft")   # {"rows", "format", "findings", "records", "ok", ...}
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from tuneforge.data.load import BadLine, iter_records
from tuneforge.data.records import Fields
from tuneforge.datatools.check import check_records

PREVIEW_ROWS = 5
CELL_CHARS = 300


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > CELL_CHARS:
        return value[:CELL_CHARS] + "..."
    if isinstance(value, list):
        return [_short(v) for v in value[:8]]
    if isinstance(value, dict):
        return {k: _short(v) for k, v in list(value.items())[:12]}
    return value


def _line(where: str) -> int | None:
    found = re.search(r":(\d+)$| row (\d+)$", where)
    return int(found.group(1) or found.group(2)) if found else None


def preview_data(path: str | Path, stage: str, fields: Fields | None = None) -> dict[str, Any]:
    """The first PREVIEW_ROWS records (a bad line as its problem), the detected format(s), and every finding of
    check_records, each example with its line number."""
    rows = []
    for item in itertools.islice(iter_records(path), PREVIEW_ROWS):
        if isinstance(item, BadLine):
            rows.append({"line": _line(item.where), "problem": item.message})
        else:
            rows.append({"line": _line(item.where), "data": _short(item.data)})
    report = check_records(iter_records(path), stage, fields=fields, near_dup_threshold=None, max_examples=50,
                           path=str(path))
    summary = report.to_dict()
    findings = []
    for kind, f in summary["findings"].items():
        findings.append({"kind": kind, "severity": f["severity"], "count": f["count"],
                         "description": f["description"],
                         "examples": [{"line": _line(e.split(": ", 1)[0]), "text": e} for e in f["examples"]]})
    findings.sort(key=lambda f: (f["severity"] != "error", f["kind"]))
    formats = summary["formats"]
    return {"path": str(path), "stage": stage, "rows": rows, "records": summary["records"], "valid": summary["valid"],
            "format": max(formats, key=formats.get) if formats else None, "formats": formats,
            "labels": summary["labels"], "errors": summary["errors"], "warnings": summary["warnings"],
            "ok": summary["errors"] == 0, "findings": findings}
