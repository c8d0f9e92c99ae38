"""bench/bench_data_scale.py's parent side on made-up runs (no model, no corpus): runs merge into the JSON as they
finish (a rerun of the same corpus and run replaces its entry), --render writes the table and the goals' ratios
from that file alone between the docs' markers, and the process-tree sampler counts a child's children."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_data_scale as bench  # noqa: E402

ENV = {"time_utc": "2026-12-06T12:00:00Z", "git": {"commit": "abcdef1234567", "dirty": False},
       "cpu": {"model": "Test CPU", "logical_cpus": 2, "flags_of_interest": {"avx512f": True, "amx_bf16": False}},
       "memory_gib": 23.5, "versions": {"torch": "2.13", "transformers": "5.25", "tokenizers": "0.23",
                                        "python": "3.11"}}


def result(rss_data: int, rss_train: int, first_step: float = 50.0, tok_s: float = 100.0, rate: int | None = 90_000):
    return {"imported_s": 10.0, "data_start_s": 12.0, "data_ready_s": 14.5, "first_step_s": first_step,
            "train_tokens_per_s": tok_s, "corpus_tokens": 1000, "tokens": 1000, "reused": rate is None,
            "cache_tok_per_s": rate, "rss_data_mb": rss_data, "rss_train_mb": rss_train,
            "load_before": [3.0, 2.0, 1.0], "load_after": [4.0, 2.0, 1.0], "cpu_imported_s": 5.0,
            "cpu_data_start_s": 6.0, "cpu_data_ready_s": 6.5, "cpu_first_step_s": first_step / 2}


def entry(corpus: str, mb: float, run: str, res: dict) -> dict:
    return {"corpus": corpus, "mb": mb, "run": run, "steps": 3, "result": res}


def test_runs_merge_and_render_with_the_goals_ratios(tmp_path):
    path = tmp_path / "scale.json"
    first = {"command": "python bench/bench_data_scale.py c100", "env": ENV}
    bench.merge_json(path, [entry("c100", 100, bench.RUNS[0], result(600, 2000))], first)
    small = [entry("c100", 100, bench.RUNS[0], result(640, 2300)),
             entry("c100", 100, bench.RUNS[1], {**result(640, 2300, first_step=8.0, tok_s=110, rate=None),
                                                "step_begin_s": 6.5, "cpu_step_begin_s": 3.0}),
             entry("c100", 100, bench.RUNS[2], result(2300, 4100, tok_s=105, rate=None))]
    bench.merge_json(path, small, first)
    later = {"command": "python bench/bench_data_scale.py c4096", "env": {**ENV, "time_utc": "2026-12-06T13:00:00Z"}}
    bench.merge_json(path, [entry("c4096", 4096, bench.RUNS[0], result(704, 2530, rate=95_000))], later)
    data = json.loads(path.read_text())
    assert len(data["entries"]) == 4 and len(data["invocations"]) == 2  # the c100 first run was replaced

    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{bench.BEGIN}\nold table\n{bench.END}\noutro\n")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_data_scale.py"), "--render", str(path),
                          "--write", str(doc)], capture_output=True, text=True, check=True).stdout
    text = doc.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith(f"{bench.END}\noutro\n")
    assert out.strip() in text
    rows = [line for line in text.splitlines() if line.startswith("| c") and not line.startswith("| corpus")]
    assert [r.split(" | ")[2] for r in rows] == [*bench.RUNS, bench.RUNS[0]]  # by size, then run
    assert "| 90,000 | 2.5 | 14.5 | 50.0 | 0.5 | 25.0 | 640 | 2,300 | 100 | 3.0 / 4.0 |" in rows[0]
    assert "c4096 / c100: 2,530 / 2,300 MB = 1.10x" in text and "while building: 1.10x" in text
    assert "c100 90,000 (2,000 per CPU second), c4096 95,000 (2,000 per CPU second)" in text
    assert ("c100 6.5 s, 3.0 CPU s to its start, 8.0 s, 4.0 CPU s to its end (data ready 14.5 s, of it the data 2.5 s)"
            in text)
    assert "training tok/s 0.95x (first run), 1.05x (second); RSS when the data is ready 0.28x" in text
    assert "commit abcdef123" in text and "Test CPU, 2 CPUs (avx512f)" in text


def wait_for(condition, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_sampler_sums_the_process_tree_and_splits_at_the_phase_mark(tmp_path):
    """A parent holding 200 MB with a child holding 300 MB; the parent lets its 200 MB go and marks the phase.
    Each step waits for the sampler to have seen the one before (files as signals: no timing assumptions)."""
    phase, ready, free, end = (tmp_path / name for name in ("phase", "ready", "free", "end"))
    wait = "import time; from pathlib import Path\nwhile not Path({!r}).exists(): time.sleep(0.02)\n"
    child = (f"b = bytearray(300 * 2**20)\nfrom pathlib import Path; Path({str(ready)!r}).touch()\n"
             + wait.format(str(end)))
    parent = (f"import subprocess, sys\nb = bytearray(200 * 2**20)\n"
              f"c = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
              + wait.format(str(free)) + f"del b\nPath({str(phase)!r}).write_text('train')\nc.wait()\n")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    peaks: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=bench.sample_tree, args=(proc.pid, phase, peaks, stop, 0.02))
    sampler.start()
    try:
        wait_for(ready.exists)
        wait_for(lambda: peaks.get("data", 0) > 500)  # parent's 200 MB + the child's 300 MB
        free.touch()
        wait_for(lambda: "train" in peaks)
        time.sleep(0.2)
    finally:
        end.touch()
        proc.wait(timeout=120)
        stop.set()
        sampler.join()
    assert 300 < peaks["train"] < peaks["data"] - 150  # after the mark: the child's 300 MB, the parent's 200 gone
