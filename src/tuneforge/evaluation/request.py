"""What `tuneforge eval` is asked to do, and where it writes by default: shared by the generation / loss
evaluation (run_eval.py) and the classifier evaluation (classify_eval.py), so neither imports the other's
caller.

    req = Request("runs/quickstart", "examples/data/quickstart/eval.jsonl"); default_output(req)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Request:
    """What to evaluate and how; the CLI fills it from its arguments."""

    target: str  # a run directory (has config.yaml) or a model (alias, directory, hub id)
    data: str
    metrics: list[str] | None = None  # None: the stage's defaults
    output: str | None = None
    max_samples: int | None = None  # None: every row of the file
    max_new_tokens: int | None = None  # None: the run's eval.max_new_tokens (64 for a bare model)
    precision: str | None = None  # None: the run's training.precision ("auto" for a bare model)
    device: str | None = None  # None: the run's training.device ("auto" for a bare model)


def first_rows(records: list, max_samples: int | None) -> tuple[list, dict]:
    """The first `max_samples` records (all when None) and the count both reports show: {"rows": N,
    "rows_in_file": M}, so a capped evaluation says "N of M"."""
    used = records[:max_samples]
    return used, {"rows": len(used), "rows_in_file": len(records)}


def rows_note(summary: dict) -> str:
    """ "300 rows" or "200 of 300 rows (--max-samples 200)" for an eval summary."""
    rows, total = summary["rows"], summary.get("rows_in_file", summary["rows"])
    return f"{rows} rows" if rows == total else f"{rows} of {total} rows (first {rows}, --max-samples)"


def is_run_dir(target: str) -> bool:
    return (Path(target) / "config.yaml").is_file()


def default_output(req: Request) -> Path:
    stem = Path(req.data).stem
    if is_run_dir(req.target):
        return Path(req.target) / f"eval-{stem}"
    return Path(f"eval-{Path(req.target.rstrip('/')).name}-{stem}")
