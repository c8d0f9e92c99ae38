"""scripts/preference_table.py copies the figures of docs/preference.md's comparison from the runs' files."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import preference_table  # noqa: E402


def fake_run(folder: Path, before: dict, after: dict) -> None:
    folder.mkdir(parents=True)
    metrics = {"eval_before": before, "eval_after": after, "train": {"steps": 8, "train_seconds": 40.0}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "train_log.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": v})
                                                      for s, v in ((1, 0.6931), (8, 0.25))) + "\n")


def test_table_is_copied_into_the_doc(tmp_path):
    common = {"reward_accuracy": 0.5, "reward_margin": 0.0, "logp_accuracy": 0.75, "loss": 0.6931}
    fake_run(tmp_path / "simpo", common, {**common, "reward_accuracy": 1.0, "reward_margin": 1.25, "loss": 0.1,
                                          "chosen_logp": -6.43, "rejected_logp": -20.0})
    fake_run(tmp_path / "kto", common, {**common, "loss": 0.4, "desirable_logp": -5.0, "undesirable_logp": -9.96})
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- preference_table:begin -->\nold\n<!-- preference_table:end -->\nafter\n")
    preference_table.main([str(tmp_path), "--stages", "simpo", "kto", "--write", str(doc)])
    lines = doc.read_text().splitlines()
    assert "old" not in lines and lines[0] == "intro" and lines[-1] == "after"
    assert ("| simpo | beta * mean token log pi | 0.50 -> 1.00 | 0.000 -> 1.250 | 0.75 -> 0.75 | -6.4 / -20.0 "
            "| 0.693 -> 0.100 | 0.693 -> 0.250 (8 steps) | 5.0 |") in lines
    assert any(line.startswith("| kto |") and "-5.0 / -10.0" in line for line in lines), lines


def test_missing_run_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="run the example first"):
        preference_table.table(tmp_path, ["dpo"])
