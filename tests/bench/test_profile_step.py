"""bench/profile_step.py on the tiny model, so the script cannot rot: the levers run side by side and the JSON
holds, per lever, one CPU and one wall time per repetition, the tokens of a step and the step's loss (the
bit-for-bit lever gives the bf16 run's loss); the profile prints the top ops table and the matmul kernels' share of
the self CPU time."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import profile_step  # noqa: E402


def test_levers_side_by_side_and_the_profile(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "levers.json"
    levers = "bf16,bf16-frozen,fp32+packed-attn,loop,loop-sdpa,loop+no-dropout"
    assert profile_step.main(["--model", str(tiny_model_dir), "--batch", "2", "--steps", "1", "--reps", "2",
                              "--levers", levers, "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]["2"]
    assert list(runs) == levers.split(",")
    for r in runs.values():
        assert len(r["cpu_s"]) == len(r["wall_s"]) == 2 and r["median_cpu_s"] > 0 and r["tokens_per_step"] > 0
    assert runs["bf16-frozen"]["loss"] == runs["bf16"]["loss"]
    assert abs(runs["fp32+packed-attn"]["loss"] - runs["bf16"]["loss"]) < 0.05 * runs["bf16"]["loss"]
    # the loop's step (held bf16 weights, per-sample attention, chunked loss) computes the same loss within bf16
    # rounding; without dropout masks exactly the same (lr 0 and LoRA B = 0: dropout cannot move it)
    assert abs(runs["loop"]["loss"] - runs["bf16"]["loss"]) < 0.01 * runs["bf16"]["loss"]
    assert abs(runs["loop-sdpa"]["loss"] - runs["loop"]["loss"]) < 0.01 * runs["loop"]["loss"]
    assert runs["loop+no-dropout"]["loss"] == runs["loop"]["loss"]
    assert "speed x1.00" in capsys.readouterr().out
    assert profile_step.main(["--model", str(tiny_model_dir), "--batch", "2", "--steps", "1", "--profile",
                              "--profile-lever", "loop", "--top", "5"]) == 0
    printed = capsys.readouterr().out
    assert "Self CPU" in printed  # the table, whatever ops top it
    share = re.search(r"matmul kernels \((.*)\): ([0-9.]+) ms of ([0-9.]+) ms self CPU", printed)
    assert share and "aten::mm" in share.group(1) and 0 < float(share.group(2)) < float(share.group(3))
