"""bench/startup.py cannot rot: its child wraps tuneforge's own functions by name (the skeleton's steps, the stage's
evaluation and generation), so a renamed function must fail here, not in the next session's measurement. One
fresh `tuneforge train` process on the tiny model, every phase of the table present."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_startup_times_every_phase_of_a_real_run(make_config, tmp_path):
    cfg = make_config(training__max_steps=2, eval__generate_samples=1, eval__max_new_tokens=2)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True)), encoding="utf-8")
    out = tmp_path / "startup.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "startup.py"), str(path), "--repeat", "1",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads(out.read_text())["runs"][0]
    for phase in ("import", "begin", "data", "model_load", "method", "first_step", "loop_end", "eval_loss",
                  "generation", "save", "report", "exit", "command -> first step", "last step -> exit"):
        assert phase in run and run[phase]["wall"] >= 0, phase
    assert run["eval_loss"]["wall"] > 0 and run["generation"]["wall"] > 0  # the wrapped calls were timed
    assert "| **command -> first step** |" in done.stdout
