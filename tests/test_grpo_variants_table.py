"""scripts/grpo_variants_table.py copies the figures of docs/grpo.md's variant table from the runs' files."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "grpo_variants_table.py"


def fake_run(folder: Path, loss_type: str, after: float, kl: float) -> None:
    folder.mkdir(parents=True)
    before = {"reward_mean": -0.5, "kl_mean": 0.0, "length_mean": 24.0, "rewards": {"m:length_penalty": -0.5}}
    after_ = {"reward_mean": after, "kl_mean": kl, "length_mean": 9.5, "rewards": {"m:length_penalty": after}}
    metrics = {"eval_before": before, "eval_after": after_, "train": {"seconds_per_step": 12.34}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(yaml.safe_dump({"grpo": {"loss_type": loss_type, "scale_rewards": "none"}}))
    log = [{"step": 1, "reward": -0.7, "kl": 0.0}, {"step": 8, "reward": -0.125, "kl": 0.01234}]
    (folder / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")


def test_table_is_copied_into_the_doc(tmp_path):
    fake_run(tmp_path / "grpo", "grpo", -0.25, 3.5)
    fake_run(tmp_path / "dr_grpo", "dr_grpo", -0.0625, 7.25)
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- grpo_variants:begin -->\nold figures\n<!-- grpo_variants:end -->\nafter\n")
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--write", str(doc)], check=True, capture_output=True)
    text = doc.read_text()
    assert "old figures" not in text and text.startswith("intro\n") and text.endswith("-->\nafter\n")
    lines = text.splitlines()
    assert "| eval reward_mean (weighted total) | -0.500 | -0.250 | -0.500 | -0.062 |" in lines
    assert "| eval length_penalty | -0.500 | -0.250 | -0.500 | -0.062 |" in lines
    assert "| eval kl_mean (nats per completion) | 0.000 | 3.500 | 0.000 | 7.250 |" in lines
    assert "| loss_type / scale_rewards | | grpo / none | | dr_grpo / none |" in lines
    assert "| train-batch reward, step 1 -> last | | -0.700 -> -0.125 (step 8) | | -0.700 -> -0.125 (step 8) |" in lines
    assert "| seconds per step | | 12.3 | | 12.3 |" in lines


def test_missing_run_says_what_to_do(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0 and "run the example first" in done.stderr
