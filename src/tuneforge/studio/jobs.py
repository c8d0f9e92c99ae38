"""A finished run's merge from the studio: an ordinary `tuneforge merge RUN_DIR` process (detached, like runs), which
folds the adapter into RUN_DIR/merged and verifies it (reloaded from disk, logits within 1e-4 of the adapter
model's; export/merge.py). Its process id lives in RUNS_DIR/.studio/NAME/merge_state.json, its output in merge.log;
the verification result is the merged directory's own merge.json.

    start_merge(meta_dir, run_dir); merge_status(meta_dir, run_dir)   # {"status", "report", "log"}
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from tuneforge.errors import UserError
from tuneforge.fsutil import write_json_atomic

_children: list[subprocess.Popen] = []  # merges this studio started: reaped as their status is read


def _alive(state: dict) -> bool:
    for child in [c for c in _children if c.poll() is not None]:
        _children.remove(child)
    try:
        proc = psutil.Process(state["pid"])
        return abs(proc.create_time() - state["create_time"]) < 1 and proc.status() != psutil.STATUS_ZOMBIE
    except (KeyError, psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def merge_status(meta: Path, run_dir: Path) -> dict[str, Any]:
    """none | running | done (with merge.json: the measured logit difference and its bound) | failed (log tail)."""
    try:
        state = json.loads((meta / "merge_state.json").read_text())
    except (OSError, ValueError):
        state = {}
    report_path = run_dir / "merged" / "merge.json"
    log = (meta / "merge.log").read_text(encoding="utf-8", errors="replace")[-3000:] if (meta / "merge.log").is_file() \
        else ""
    if report_path.is_file():
        return {"status": "done", "report": json.loads(report_path.read_text()), "log": log}
    if not state:
        return {"status": "none", "report": None, "log": ""}
    return {"status": "running" if _alive(state) else "failed", "report": None, "log": log}


def start_merge(meta: Path, run_dir: Path, method_mergeable: bool) -> dict[str, Any]:
    if not (run_dir / "metrics.json").is_file():
        raise UserError(f"{run_dir.name}: not finished yet; merge needs the saved adapter")
    if not method_mergeable:
        raise UserError(f"{run_dir.name}: its method saves no mergeable adapter (full / freeze runs are whole "
                        "models already; adapter, prefix and prompt cannot fold into weights)")
    if merge_status(meta, run_dir)["status"] in ("running", "done"):
        raise UserError(f"{run_dir.name}: merged already (or merging)")
    meta.mkdir(parents=True, exist_ok=True)
    with (meta / "merge.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "merge", str(run_dir)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _children.append(proc)
    created = psutil.Process(proc.pid).create_time()
    write_json_atomic(meta / "merge_state.json", {"pid": proc.pid, "create_time": created, "started": time.time()})
    return merge_status(meta, run_dir)
