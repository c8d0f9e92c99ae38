"""Runs as the studio sees them: ordinary `tuneforge train` processes, started detached in their own process group
(start_new_session), so a closed browser or a restarted studio leaves them training. Everything the studio knows
lives in files, found again at start: each run's output_dir under --runs-dir (config.yaml, train_log.jsonl written
live, checkpoints/, metrics.json) and, for runs the studio started, RUNS_DIR/.studio/NAME/ (the launch config.yaml,
state.json with the process id and its start time, log.txt with the process's output). Runs started from the
command line show up too (their output_dir under --runs-dir).

    mgr = RunManager(Path("runs")); mgr.submit("first", yaml_text); mgr.tick(); mgr.stop("first")
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from tuneforge.errors import UserError
from tuneforge.fsutil import write_json_atomic, write_text_atomic
from tuneforge.studio.discover import RESERVED, find_runs

GENERATIONS, REPORT_CHARS = 20, 20_000  # what a run's page shows of generations.jsonl and report.md
LIVE_SECONDS = 60  # a run the studio did not start counts as running while its train_log.jsonl is this fresh


def read_log(path: Path) -> list[dict]:
    """train_log.jsonl's records in step order, the last record of each step kept (a resumed run may repeat
    steps a killed attempt logged); a line cut short by a kill is skipped."""
    by_step: dict[int, dict] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            by_step[int(entry["step"])] = entry
        except (ValueError, KeyError, TypeError):
            continue
    return [by_step[k] for k in sorted(by_step)]


def finite(value: Any) -> Any:
    """JSON for the page: NaN / inf (a skipped non-finite step) become null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def progress(points: list[dict], total: int | None) -> dict[str, Any]:
    """Step, loss, real tokens per second and ETA from the recent steps of a log."""
    if not points:
        return {"step": 0, "total_steps": total, "loss": None, "tokens_per_second": None, "eta_seconds": None}
    recent = points[-20:]
    seconds = sum(p.get("seconds") or 0 for p in recent)
    tps = sum(p.get("tokens") or 0 for p in recent) / seconds if seconds > 0 else None
    step = points[-1]["step"]
    eta = (total - step) * seconds / len(recent) if total and seconds > 0 and step <= total else None
    return {"step": step, "total_steps": total, "loss": points[-1].get("loss"), "tokens_per_second": tps,
            "eta_seconds": eta}


def _load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def _alive(state: dict) -> bool:
    """The process in state.json is still the one the studio started (same pid and start time) and not a zombie."""
    pid = state.get("pid")
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - state.get("create_time", 0)) < 1 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class RunManager:
    """Finds, starts, stops and resumes runs under `runs_dir`; at most `parallel` studio-started runs train at
    once, the others wait in a queue (first submitted, first started)."""

    # The command a run is: `tuneforge train CONFIG [overrides]` with this Python (tests swap in a stand-in).
    TRAIN = (sys.executable, "-m", "tuneforge", "train")

    def __init__(self, runs_dir: Path, parallel: int = 1, cwd: Path | None = None) -> None:
        self.runs_dir, self.parallel = runs_dir.resolve(), parallel
        self.cwd = (cwd or Path.cwd()).resolve()
        self.meta = self.runs_dir / ".studio"
        self.meta.mkdir(parents=True, exist_ok=True)
        self.children: dict[str, subprocess.Popen] = {}  # started by this studio process: reaped by poll()
        self.lock = threading.RLock()

    # ---- files -------------------------------------------------------------------------------------------
    def _state(self, name: str) -> dict:
        try:
            return json.loads((self.meta / name / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, name: str, state: dict) -> None:
        write_json_atomic(self.meta / name / "state.json", state)

    def names(self) -> list[str]:
        return find_runs(self.runs_dir, self.meta)  # nested runs too, e.g. "exp1/a"

    def run_dir(self, name: str) -> Path:
        if name not in self.names():
            raise UserError(f"no run named {name!r} under {self.runs_dir}")
        return self.runs_dir / name

    # ---- status ------------------------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        out, state = self.runs_dir / name, self._state(name)
        child = self.children.get(name)
        if child is not None and child.poll() is not None:
            self.children.pop(name, None)
        config = _load_yaml(out / "config.yaml") or _load_yaml(self.meta / name / "config.yaml")
        log_path = out / "train_log.jsonl"
        metrics_path = out / "metrics.json"
        started = state.get("started", 0)
        error = None
        if state.get("queued"):
            status = "queued"
        elif state.get("cancelled"):
            status = "cancelled"
        elif _alive(state):
            status = "running"
        elif metrics_path.is_file() and metrics_path.stat().st_mtime >= started - 1:
            status = "finished"
        elif not state and log_path.is_file() and time.time() - log_path.stat().st_mtime < LIVE_SECONDS:
            status = "running"
        else:
            tail = self.log_tail(name)
            if "interrupted (signal" in tail or (not state and (out / "checkpoints").is_dir()):
                status = "stopped"
            else:
                status = "failed" if state else "incomplete"
                lines = [x for x in tail.splitlines() if x.startswith("error:") or x.startswith("  ")]
                error = "\n".join(lines[-12:]) or None
        training = config.get("training") or {}
        checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() \
            else []
        return {"name": name, "status": status, "studio": bool(state), "stage": config.get("stage"),
                "method": (config.get("method") or {}).get("name"), "model": config.get("model"),
                "max_steps": training.get("max_steps"), "checkpoints": checkpoints, "error": error,
                "started": started or None, "command": state.get("command"),
                **finite(progress(read_log(log_path), training.get("max_steps")))}

    def detail(self, name: str) -> dict[str, Any]:
        out = self.run_dir(name)
        info = self.status(name)
        metrics = {}
        if (out / "metrics.json").is_file():
            try:
                metrics = json.loads((out / "metrics.json").read_text())
            except ValueError:
                pass
        config_text = ""
        for path in (out / "config.yaml", self.meta / name / "config.yaml"):
            if path.is_file():
                config_text = path.read_text(encoding="utf-8")
                break
        generations = []
        if (out / "generations.jsonl").is_file():
            for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()[:GENERATIONS]:
                try:
                    generations.append(json.loads(line))
                except ValueError:
                    continue
        report = (out / "report.md").read_text(encoding="utf-8")[:REPORT_CHARS] if (out / "report.md").is_file() else ""
        return finite({**info, "points": read_log(out / "train_log.jsonl"), "metrics": metrics,
                       "evals": read_log(out / "eval_log.jsonl"),  # the periodic evals as they happen
                       "config": config_text, "log": self.log_tail(name), "generations": generations,
                       "report": report})

    def log_tail(self, name: str, n_bytes: int = 6000) -> str:
        path = self.meta / name / "log.txt"
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - n_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def list(self) -> list[dict[str, Any]]:
        return [self.status(n) for n in self.names()]

    # ---- actions -----------------------------------------------------------------------------------------
    def submit(self, name: str, config_text: str) -> dict[str, Any]:
        """Queue a new run (its YAML as the form showed it); it starts when a slot is free."""
        with self.lock:
            if name in self.names() or name in RESERVED or (self.runs_dir / name).exists():
                raise UserError(f"a run named {name!r} exists already under {self.runs_dir} (or the name is "
                                "taken by a folder there); pick another name")
            (self.meta / name).mkdir(parents=True)
            write_text_atomic(self.meta / name / "config.yaml", config_text)
            self._save_state(name, {"queued": True, "submitted": time.time(), "overrides": []})
        self.tick()
        return self.status(name)

    def resume(self, name: str, max_steps: int | None = None) -> dict[str, Any]:
        """Queue the run again with resume=auto (from its last complete checkpoint); `max_steps` moves its end
        (train longer, or stop sooner)."""
        with self.lock:
            self.run_dir(name)
            info = self.status(name)
            if info["status"] in ("running", "queued"):
                raise UserError(f"run {name!r} is {info['status']}")
            if info["status"] == "finished":
                raise UserError(f"run {name!r} has finished; there is nothing to resume")
            if not (self.meta / name / "config.yaml").is_file():  # started from the command line
                (self.meta / name).mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.meta / name / "config.yaml",
                                  (self.runs_dir / name / "config.yaml").read_text(encoding="utf-8"))
            overrides = ["resume=auto", *([f"training.max_steps={int(max_steps)}"] if max_steps else [])]
            self._save_state(name, {"queued": True, "submitted": time.time(), "overrides": overrides})
        self.tick()
        return self.status(name)

    def stop(self, name: str) -> dict[str, Any]:
        """SIGTERM to the run's process group: the run saves a complete checkpoint and exits. A queued run
        leaves the queue."""
        with self.lock:
            self.run_dir(name)
            state = self._state(name)
            if state.get("queued"):
                state["queued"] = False
                state["cancelled"] = True
                self._save_state(name, state)
            elif _alive(state):
                os.killpg(state["pgid"], signal.SIGTERM)
            elif self.status(name)["status"] == "running":
                raise UserError(f"run {name!r} was started outside the studio: stop it where it runs (Ctrl-C)")
            else:
                raise UserError(f"run {name!r} is not running")
        return self.status(name)

    def tick(self) -> None:
        """Start queued runs while fewer than `parallel` studio runs train."""
        with self.lock:
            states = {n: self._state(n) for n in self.names()}
            running = sum(1 for s in states.values() if _alive(s))
            queue = sorted((s.get("submitted", 0), n) for n, s in states.items() if s.get("queued"))
            for _, name in queue[: max(0, self.parallel - running)]:
                self._start(name, states[name])

    def _start(self, name: str, state: dict) -> None:
        meta = self.meta / name
        cmd = [*self.TRAIN, str(meta / "config.yaml"), *state.get("overrides", [])]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with (meta / "log.txt").open("ab") as log:
            log.write(f"$ tuneforge train {' '.join(cmd[len(self.TRAIN):])}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.cwd, env=env, start_new_session=True)
        self.children[name] = proc
        self._save_state(name, {"queued": False, "pid": proc.pid, "pgid": proc.pid, "started": time.time(),
                                "create_time": psutil.Process(proc.pid).create_time(),
                                "command": "tuneforge train " + " ".join(cmd[len(self.TRAIN):]),
                                "overrides": state.get("overrides")})

    def run_forever(self, stopping: threading.Event, every: float = 0.5) -> None:
        while not stopping.wait(every):
            try:
                self.tick()
            except Exception as exc:  # keep scheduling whatever one tick met
                print(f"studio: queue tick failed: {type(exc).__name__}: {exc}", file=sys.stderr)
