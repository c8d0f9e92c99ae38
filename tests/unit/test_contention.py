"""Other processes' CPU use seen while a run starts (train/contention.py): /proc/stat read right, a busy
process beside this one measured as about one core, the warning only when the run's threads do not fit beside
what the others use, and a real stage run that logs it with a busy process beside it."""

import subprocess
import sys
import time

import pytest

from tuneforge.train import contention
from tuneforge.train.contention import Sample, warning

BUSY_LOOP = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"


def test_busy_seconds_from_proc_stat(tmp_path, monkeypatch):
    monkeypatch.setattr(contention.os, "sysconf", lambda name: 100)
    stat = tmp_path / "stat"  # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  1000 50 200 5000 300 10 20 5 400 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n")
    sample = contention.sample(stat)
    assert sample.busy == pytest.approx((1000 + 50 + 200 + 10 + 20 + 5) / 100)  # no idle, iowait or guest
    stat.write_text("intr 1 2 3\n")
    assert contention.sample(stat) is None and contention.sample(tmp_path / "missing") is None


def test_the_warning_needs_busy_others_and_threads_that_do_not_fit():
    def pair(others: float, own: float = 0.3, seconds: float = 1.0) -> tuple[Sample, Sample]:
        return Sample(100.0, 5.0, 10.0), Sample(100.0 + others * seconds + own, 5.0 + own, 10.0 + seconds)

    text = warning(*pair(1.0), threads=2, n_cpus=2)
    assert text and "kept 1.0 of this machine's 2 CPUs busy" in text and "OMP_NUM_THREADS=1" in text
    assert warning(*pair(1.0), threads=1, n_cpus=2) is None  # one thread fits beside one busy core
    assert warning(*pair(0.3), threads=2, n_cpus=2) is None  # a little background work is not worth a word
    assert warning(*pair(1.0), threads=4, n_cpus=8) is None  # room to spare
    assert "OMP_NUM_THREADS=5" in warning(*pair(3.0), threads=8, n_cpus=8)
    assert warning(*pair(2.0, seconds=0.1), threads=2, n_cpus=2) is None  # too short a window to judge
    assert warning(None, None, threads=2) is None


@pytest.fixture
def busy_process():
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    time.sleep(0.3)  # running
    yield proc
    proc.kill()
    proc.wait()


def test_a_busy_process_beside_this_one_is_about_one_core(busy_process):
    start = contention.sample()
    time.sleep(1.0)
    others = contention.others_busy(start, contention.sample())
    assert others is not None and others >= 0.7, others  # the loop's core (whatever else the machine runs)


def test_a_run_beside_a_busy_process_says_so(make_config, busy_process, monkeypatch):
    import torch

    from tuneforge.stages import STAGES

    monkeypatch.setattr(torch, "get_num_threads", lambda: max(2, contention.cpus()))  # the default: a thread a CPU
    wait = contention.sample_after  # the tiny model starts in less than MIN_WINDOW: a real model's start is longer
    monkeypatch.setattr(contention, "sample_after", lambda start: wait(start, at_least=0.5))
    cfg = make_config(training__max_steps=2, eval__generate_samples=0, eval__before=False)
    lines: list[str] = []
    STAGES["sft"].run(cfg, lines.append)
    busy = [x for x in lines if x.startswith("warning: other processes kept")]
    assert len(busy) == 1 and "OMP_NUM_THREADS=" in busy[0], lines

