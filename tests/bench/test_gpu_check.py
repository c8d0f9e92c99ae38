"""bench/gpu_check.py in its CI mode (--device cpu --max-steps 2, the tiny model), so the GPU check cannot rot:
every run and the seeds' recipe produce their figures and the JSON has the fields the docs' table reads."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_cpu(tiny_model_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--device", "cpu", "--max-steps", "2", "--model", str(tiny_model_dir), "--batch", "2",
                           "--peak-seconds", "0.1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "versions:" in printed and "| seeds' recipe |" in printed
    result = json.loads(out.read_text())
    assert result["env"]["torch"] and result["bf16_peak_flops"] > 0
    assert set(result["runs"]) == {"lora", "qlora", "full"}
    for run in result["runs"].values():
        assert len(run["losses"]) == len(run["cpu_fp32_losses"]) == 2
        assert run["max_rel_loss_diff"] < 0.05  # bf16 autocast (or fp32) vs fp32 on the same rows
        assert run["tokens_per_second"] > 0 and 0 < run["mfu"] < 1 and run["plan_gib"] > 0
    assert len(result["seeds_recipe"]["losses"]) == 2 and result["lora_vs_seeds_tokens_per_second"] > 0
