"""Other processes on this machine's CPUs, seen while a run starts, and the warning they call for.

torch runs its CPU math on OpenMP threads (one per core by default) that meet at a barrier after every operation:
when another process keeps a core busy, every operation waits for the thread that shares it, and the run slows by
far more than the share of CPU it lost (bench/contention.py measures it). The run compares the machine's busy CPU
time over its start (tokenizer and data loading) with its own and, when other processes took a core or more of
what its threads need, says so and how many threads would fit.

    start = sample()
    ...  # load the tokenizer and the data
    text = warning(start, sample_after(start), torch.get_num_threads())
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

MIN_WINDOW = 0.2  # seconds: a shorter start is not judged (/proc/stat counts in 10 ms ticks)
BUSY = 0.5  # other processes' CPUs (cores' worth) before a warning is worth giving


@dataclass(frozen=True)
class Sample:
    busy: float  # CPU seconds the whole machine spent busy since boot (/proc/stat, all CPUs)
    own: float  # this process's CPU seconds (all its threads)
    wall: float


def _busy_seconds(stat: str) -> float | None:
    """Busy CPU seconds of the machine from /proc/stat's first line (user nice system idle iowait irq softirq
    steal ...): everything but idle and iowait, in USER_HZ ticks."""
    fields = stat.split("\n", 1)[0].split()
    if len(fields) < 5 or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    guest = sum(ticks[8:10])  # guest time is counted in user / nice already
    return (sum(ticks) - guest - idle) / os.sysconf("SC_CLK_TCK")


def sample(stat: Path = Path("/proc/stat")) -> Sample | None:
    """The machine's and this process's CPU time now (None where /proc/stat is missing: not Linux)."""
    try:
        busy = _busy_seconds(stat.read_text())
    except (OSError, ValueError):
        return None
    return None if busy is None else Sample(busy, time.process_time(), time.monotonic())


def sample_after(start: Sample | None, at_least: float = 0.0) -> Sample | None:
    """A sample `at_least` seconds after `start` (sleeping the rest). A run takes it without waiting: a start
    shorter than MIN_WINDOW (a tiny model's, as in the tests) is not judged rather than made slower."""
    if start is not None and at_least > 0:
        time.sleep(max(0.0, at_least - (time.monotonic() - start.wall)))
    return sample()


def others_busy(start: Sample | None, end: Sample | None) -> float | None:
    """Cores' worth of CPU that other processes used between two samples (None: no samples, or too short)."""
    if start is None or end is None or end.wall - start.wall < MIN_WINDOW:
        return None
    return max(0.0, ((end.busy - start.busy) - (end.own - start.own)) / (end.wall - start.wall))


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def warning(start: Sample | None, end: Sample | None, threads: int, n_cpus: int | None = None) -> str | None:
    """The log line when other processes keep busy CPUs this run's `threads` need, else None."""
    others, n = others_busy(start, end), n_cpus or cpus()
    if others is None or threads < 2 or others < BUSY or threads + others <= n + 0.25:
        return None
    fit = max(1, math.floor(n - others + 0.25))
    return (f"warning: other processes kept {others:.1f} of this machine's {n} CPUs busy while this run started; "
            f"its {threads} math threads wait for each other at every operation when one shares a core, which slows "
            f"a step by far more than the share lost (bench/contention.py). Stop the other work, or start this run "
            f"with OMP_NUM_THREADS={fit}")
