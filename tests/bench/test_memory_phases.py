"""bench/memory_phases.py cannot rot: on the tiny model, one step, it reports every phase with RSS at least the
live malloc bytes' order, a training phase, and what sits free in the heap."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallinfo2 is glibc's")
def test_phases_are_reported(tiny_model_dir, tmp_path):
    out = tmp_path / "m.json"
    env = {**os.environ, "TUNEFORGE_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "bench/memory_phases.py", "--model", str(tiny_model_dir), "--max-steps",
                           "1", "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    phases = report["phases"]
    assert report["environment"]["git"] and isinstance(report["malloc_env"], dict)
    assert [p["phase"] for p in phases] == ["imports", "model + data", "base eval", "training, 1 steps", "tuned eval"]
    for p in phases:
        assert p["rss_peak_mb"] >= p["rss_end_mb"] > 0 and p["live_peak_mb"] >= p["live_end_mb"] > 0
        assert p["heap_free_end_mb"] >= 0 and p["seconds"] > 0
    assert phases[3]["rss_peak_mb"] > phases[0]["rss_end_mb"]  # the model and a step cost memory


def test_the_kernel_cache_sweep_in_the_docs_is_the_jsons():
    """docs/benchmarks.md's kernel-cache table is bench/results/kernel_cache/summary.json, and that summary is its
    runs' own JSON (not typed)."""
    import json

    root = Path(__file__).resolve().parents[2]
    folder = root / "bench" / "results" / "kernel_cache"
    runs = json.loads((folder / "summary.json").read_text())["runs"]
    docs = (root / "docs" / "benchmarks.md").read_text().split("### oneDNN's kernel caches", 1)[1]
    assert len(runs) >= 5
    for entries, r in runs.items():
        phases = json.loads((folder / r["file"]).read_text())["phases"]
        training = next(p for p in phases if p["phase"].startswith("training"))
        assert (r["training_rss_peak_mb"], r["live_end_mb"]) == (round(training["rss_peak_mb"]),
                                                                 round(training["live_end_mb"]))
        row = (f" | {r['training_s']:.1f} | {r['training_rss_peak_mb']:,} | {r['training_live_peak_mb']:,} | "
               f"{r['live_end_mb']:,} | {r['heap_free_end_mb']:,} |")
        assert f"| {entries}" in docs and row in docs, entries
