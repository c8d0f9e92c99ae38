"""What the studio does with finished runs, each an ordinary tuneforge process (detached, like runs) whose
verification result is the file that command writes:
- merge: `tuneforge merge RUN` -> RUN/merged/merge.json (reloaded from disk, logits within 1e-4 of the adapter's);
- export: `tuneforge export RUN --format gguf --quant Q` -> RUN/model-Q.gguf.json (the file's weights, vocabulary
  and template checked; transformers' GGUF loader and llama.cpp, when installed, within a KL bound of the model);
- combine: `tuneforge merge --combine A B ... --how H [--weights W] --output RUNS_DIR/NAME` -> NAME/merge.json.
A job's process id lives in META/KIND_state.json, its output in META/KIND.log (META: RUNS_DIR/.studio/RUN for a
run's merge and export, RUNS_DIR/.studio/.combine/NAME for a combination).

    start_job(meta, "merge", [str(run_dir)], run_dir / "merged" / "merge.json"); job_status(meta, "merge")
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

TUNEFORGE = (sys.executable, "-m", "tuneforge")
COMMANDS = {"merge": ("merge",), "export": ("export",), "combine": ("merge", "--combine")}
QUANTS = ("f16", "q8_0")  # tuneforge export --quant
_children: list[subprocess.Popen] = []  # jobs this studio started: reaped as their status is read


def _alive(state: dict) -> bool:
    for child in [c for c in _children if c.poll() is not None]:
        _children.remove(child)
    try:
        proc = psutil.Process(state["pid"])
        return abs(proc.create_time() - state["create_time"]) < 1 and proc.status() != psutil.STATUS_ZOMBIE
    except (KeyError, psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def job_status(meta: Path, kind: str, result: Path | None = None) -> dict[str, Any]:
    """none | running | done (the result file: the measured verification) | failed (the log's tail). `result`:
    where a job started outside the studio (the CLI) left its result, when no job of this kind was started here."""
    try:
        state = json.loads((meta / f"{kind}_state.json").read_text())
    except (OSError, ValueError):
        state = {}
    result = Path(state["result"]) if state.get("result") else result
    log_path = meta / f"{kind}.log"
    log = log_path.read_text(encoding="utf-8", errors="replace")[-3000:] if log_path.is_file() else ""
    base = {"kind": kind, "command": state.get("command"), "result": str(result) if result else None, "log": log}
    if result is not None and result.is_file():
        try:
            return {**base, "status": "done", "report": json.loads(result.read_text())}
        except ValueError:
            pass  # being written
    if not state:
        return {**base, "status": "none", "report": None}
    return {**base, "status": "running" if _alive(state) else "failed", "report": None}


def start_job(meta: Path, kind: str, args: list[str], result: Path) -> dict[str, Any]:
    meta.mkdir(parents=True, exist_ok=True)
    cmd = [*TUNEFORGE, *COMMANDS[kind], *args]
    with (meta / f"{kind}.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    _children.append(proc)
    write_json_atomic(meta / f"{kind}_state.json", {
        "pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "started": time.time(),
        "result": str(result), "command": "tuneforge " + " ".join(cmd[len(TUNEFORGE):])})
    return job_status(meta, kind)


# ---- a run's merge and export -----------------------------------------------------------------------------------
def merge_status(meta: Path, run_dir: Path) -> dict[str, Any]:
    return job_status(meta, "merge", run_dir / "merged" / "merge.json")


def export_status(meta: Path, run_dir: Path) -> dict[str, Any]:
    done = [run_dir / f"model-{q}.gguf.json" for q in QUANTS if (run_dir / f"model-{q}.gguf.json").is_file()]
    return job_status(meta, "export", done[0] if done else None)


def _check_finished(meta: Path, run_dir: Path, what: str) -> None:
    if not (run_dir / "metrics.json").is_file():
        raise UserError(f"{run_dir.name}: not finished yet; {what} needs the saved model")
    for kind in ("merge", "export"):  # both write RUN/merged: one at a time
        if job_status(meta, kind)["status"] == "running":
            raise UserError(f"{run_dir.name}: its {kind} is running; wait for it to end")


def start_merge(meta: Path, run_dir: Path, method: Any) -> dict[str, Any]:
    """`method`: the run's METHODS entry."""
    _check_finished(meta, run_dir, "merge")
    if not method.mergeable:
        raise UserError(f"{run_dir.name}: its method saves no mergeable adapter (full / freeze runs are whole "
                        "models already; adapter, prefix and prompt cannot fold into weights)")
    if merge_status(meta, run_dir)["status"] == "done":
        raise UserError(f"{run_dir.name}: merged already")
    return start_job(meta, "merge", [str(run_dir)], run_dir / "merged" / "merge.json")


def start_export(meta: Path, run_dir: Path, quant: str, method: Any, generates: bool) -> dict[str, Any]:
    if quant not in QUANTS:
        raise UserError(f"quant {quant!r}: expected one of {', '.join(QUANTS)}")
    _check_finished(meta, run_dir, "GGUF export")
    if not generates:
        raise UserError(f"{run_dir.name}: GGUF export is for runs of a stage that generates text (causal LMs)")
    if not (method.mergeable or method.saves_whole_model):
        raise UserError(f"{run_dir.name}: GGUF holds plain weights; this method cannot be merged into them "
                        f"({method.why_not_mergeable})")
    result = run_dir / f"model-{quant}.gguf.json"
    result.unlink(missing_ok=True)  # exported again: this export's findings, not the last one's
    return start_job(meta, "export", [str(run_dir), "--format", "gguf", "--quant", quant], result)


# ---- several LoRA runs combined into one model ------------------------------------------------------------------
def combined(root: Path) -> list[dict[str, Any]]:
    """Every combination started from the studio (RUNS_DIR/.studio/.combine/NAME), newest first."""
    found = [d for d in root.iterdir() if (d / "combine_state.json").is_file()] if root.is_dir() else []
    found.sort(key=lambda d: (d / "combine_state.json").stat().st_mtime, reverse=True)
    return [{"name": d.name, **job_status(d, "combine")} for d in found]


def start_combine(root: Path, output: Path, run_dirs: list[Path], how: str, weights: str | None) -> dict[str, Any]:
    """`output`: RUNS_DIR/NAME, new. The runs' compatibility (same base, LoRA, ranks for --how) is checked by the
    combine command itself, whose refusal shows in the log."""
    from tuneforge.export.combine import HOWS, parse_weights

    if len(run_dirs) < 2:
        raise UserError("pick at least two runs to combine")
    if how not in HOWS:
        raise UserError(f"how {how!r}: expected one of {', '.join(HOWS)}")
    if output.exists() or (root / output.name).exists():
        raise UserError(f"{output.name!r} is taken under {output.parent}; pick another name")
    for run_dir in run_dirs:
        if not (run_dir / "metrics.json").is_file():
            raise UserError(f"{run_dir.name}: not finished yet; combining needs its saved adapter")
    args = [*map(str, run_dirs), "--how", how, "--output", str(output)]
    if weights:
        parse_weights(weights, len(run_dirs))  # refused here, with its reason, before a process starts
        args += ["--weights", weights]
    return start_job(root / output.name, "combine", args, output / "merge.json")
