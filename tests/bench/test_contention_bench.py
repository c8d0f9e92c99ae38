"""bench/contention.py on the tiny model, so the script cannot rot: every case (idle machine with 2 threads, beside
a busy core with 2 and with 1) runs in its own process with that many threads, and the JSON holds each case's
per-repetition step times, the ratios and the environment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import contention  # noqa: E402


def test_the_cases_run_apart_and_the_json_holds_them(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "contention.json"
    report = contention.main(["--model", str(tiny_model_dir), "--reps", "1", "--steps", "1", "--batch", "1",
                              "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["cases"] == report["cases"] and set(saved["cases"]) == {"idle/2", "busy/2", "busy/1"}
    for case in saved["cases"].values():
        assert len(case["reps"]) == 1 and case["median_s"] > 0
    assert saved["busy2_over_idle2"] == saved["cases"]["busy/2"]["median_s"] / saved["cases"]["idle/2"]["median_s"]
    assert saved["environment"]["cpu"] and "beside a busy core" in capsys.readouterr().out


def test_a_child_runs_with_the_threads_it_is_given(tiny_model_dir):
    r = contention.run_case(str(tiny_model_dir), "idle", 1, 1, 1)
    assert r["threads"] == 1 and len(r["step_s"]) == 1 and r["tokens_per_step"] > 0
