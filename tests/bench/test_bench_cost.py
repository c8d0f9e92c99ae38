"""bench/bench_cost.py cannot rot: its quick mode runs `tuneforge train` cells on the tiny model and on a
random-initialised shape built from an arch config (the way it builds the 360M and 1.7B models), and the JSON
holds each cell's steady tokens/s, peak RSS and `tuneforge plan`'s estimate for the same cell, with the machine's
record. A cell the plan says cannot fit is reported, not run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_cost  # noqa: E402


def test_cells_parse_and_bad_cells_are_refused():
    assert bench_cost.parse_cell("random:smollm2-1.7b:lora:4") == ("random:smollm2-1.7b", "lora", 4)
    assert bench_cost.parse_cell("/a/dir:full:1") == ("/a/dir", "full", 1)
    try:
        bench_cost.parse_cell("smollm2:sgd:4")
    except SystemExit as exc:
        assert "MODEL:METHOD:BATCH" in str(exc)
    else:
        raise AssertionError("a bad cell was accepted")


def test_quick_mode_measures_cells_beside_the_plan(tiny_model_dir, tmp_path):
    arch = json.loads((tiny_model_dir / "config.json").read_text())
    arch["num_hidden_layers"] = 3  # another shape than the tiny model's: built from the arch file, random weights
    arch_file = tmp_path / "tiny-3l"
    arch_file.mkdir()
    (arch_file / "config.json").write_text(json.dumps(arch))
    out = tmp_path / "cost.json"
    env = {**os.environ, "TUNEFORGE_HOME": str(tmp_path / "home")}
    cells = f"{tiny_model_dir}:lora:1,{tiny_model_dir}:full:2,random:{arch_file}:lora:2"
    proc = subprocess.run([sys.executable, "bench/bench_cost.py", "--quick", "--threads", "1", "--cells", cells,
                           "--tokenizer-from", str(tiny_model_dir), "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rec = json.loads(out.read_text())
    assert len(rec["env"]["git"]["commit"]) == 40 and rec["env"]["cpu"]["model"]
    assert [c["cell"] for c in rec["cells"]] == cells.split(",")
    for c in rec["cells"]:
        r = c["run"]
        assert r["steps"] == 2 and r["tokens_per_second"] > 0 and r["peak_rss_mb"] > 0, c["cell"]
        assert r["tokens_per_step"] > 0 and all(s > 0 for s in r["step_s"]), c["cell"]
        # the plan counts the same parameters the run trained
        assert c["plan_max"]["total_params"] == r["total_params"], c["cell"]
        assert c["plan_max"]["trainable_params"] == r["trainable_params"], c["cell"]
        assert 0 < c["plan_fed"]["total_gib"] <= c["plan_max"]["total_gib"], c["cell"]
    lora, full, random = rec["cells"]
    assert full["run"]["trainable_params"] == full["run"]["total_params"] > lora["run"]["trainable_params"]
    built = tmp_path / "home" / "bench-models" / "tiny-3l-random"
    assert json.loads((built / "config.json").read_text())["num_hidden_layers"] == 3
    assert random["run"]["total_params"] > lora["run"]["total_params"]  # one layer more
    assert rec["table"] in proc.stdout and rec["table"].count("\n") == 1 + len(cells.split(","))


def test_a_cell_the_plan_refuses_is_not_run(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setattr(bench_cost, "plan_estimate", lambda *a: {"total_gib": 99.0, "fits": False, "budget_gib": 20.0,
                                                                "total_params": 10, "trainable_params": 10, "gib": {}})
    monkeypatch.setattr(bench_cost, "run_cell", lambda *a: (_ for _ in ()).throw(AssertionError("ran")))
    out = tmp_path / "cost.json"
    assert bench_cost.main(["--quick", "--cells", f"{tiny_model_dir}:full:4", "--out", str(out)]) == 0
    cell = json.loads(out.read_text())["cells"][0]
    assert "run" not in cell
    assert "not run: plan says 99.0 GiB > 20.0 GiB here" in json.loads(out.read_text())["table"]
