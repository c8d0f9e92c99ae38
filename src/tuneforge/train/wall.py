"""Wall seconds of a run over every process it took. A run stopped by a signal (or killed) and resumed is
several processes; metrics.json's `wall_seconds` is their sum and `process_wall_seconds` lists each. Every
checkpoint keeps the list up to its save (the earlier processes' seconds, then the saving process's so far), and
a process resumed from it continues that list: the seconds counted are those of the processes that led to the
result (a killed process's seconds after its last checkpoint are not counted).

    wall.start()                          # skeleton.begin: this process's clock, no earlier processes
    wall.resumed(seconds)                 # on resume: the list the checkpoint kept (None: not recorded)
    meta["wall_seconds"] = wall.so_far()  # with each checkpoint
"""

from __future__ import annotations

import json
import time
from pathlib import Path

FILE = "wall_seconds.json"  # in a Trainer checkpoint (tuneforge's own keep the list in state.json)
_clock: dict = {"start": time.perf_counter(), "before": []}  # this process: when its run began, earlier ones


def start() -> float:
    """A run begins in this process: its clock starts, no earlier processes yet. Returns the start time."""
    _clock.update(start=time.perf_counter(), before=[])
    return _clock["start"]


def resumed(seconds: list[float] | None) -> None:
    """The run resumes from a checkpoint that kept `seconds` (one entry per process up to its save)."""
    _clock["before"] = [float(s) for s in seconds or []]


def so_far() -> list[float]:
    """Earlier processes' seconds, then this process's up to now."""
    return [*_clock["before"], time.perf_counter() - _clock["start"]]


def write(checkpoint: Path) -> None:
    (checkpoint / FILE).write_text(json.dumps(so_far()))


def read(checkpoint: Path) -> list[float] | None:
    path = checkpoint / FILE
    return json.loads(path.read_text()) if path.is_file() else None
