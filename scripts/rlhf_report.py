"""Summarise the RLHF example's three runs (SFT -> reward model -> PPO) in one table.

    python scripts/rlhf_report.py [runs/rlhf]      # writes runs/rlhf/report.md and prints it

Reads each run's metrics.json: the SFT eval loss, the reward model's pairwise accuracy and margin on held-out
pairs, and the PPO policy's mean reward, house-style rate and KL to the SFT policy on held-out prompts,
before and after PPO.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _metrics(run: Path) -> dict:
    path = run / "metrics.json"
    if not path.is_file():
        sys.exit(f"{path}: missing; run the example first (make rlhf)")
    return json.loads(path.read_text())


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(root: Path) -> str:
    sft, reward, ppo = (_metrics(root / name) for name in ("sft", "reward", "ppo"))
    style = [k for k in (ppo["eval_after"].get("rewards") or {}) if "regex" in k]
    lines = ["# RLHF example: SFT -> reward model -> PPO", "",
             "| step | metric | before | after |", "|---|---|---|---|"]
    rows = [("SFT", "eval loss", sft["eval_before"]["loss"], sft["eval_after"]["loss"]),
            ("reward model", "pairwise accuracy (held-out pairs)", reward["eval_before"]["accuracy"],
             reward["eval_after"]["accuracy"]),
            ("reward model", "mean margin", reward["eval_before"]["margin_mean"], reward["eval_after"]["margin_mean"]),
            ("PPO", "mean reward (held-out prompts)", ppo["eval_before"]["reward_mean"],
             ppo["eval_after"]["reward_mean"]),
            ("PPO", "KL to the SFT policy (nats per answer)", ppo["eval_before"]["kl_mean"],
             ppo["eval_after"]["kl_mean"]),
            ("PPO", "mean answer length (tokens)", ppo["eval_before"]["length_mean"], ppo["eval_after"]["length_mean"])]
    if style:
        rows.append(("PPO", "house-style rate (`Answer: ...`)", ppo["eval_before"]["rewards"][style[0]],
                     ppo["eval_after"]["rewards"][style[0]]))
    lines += [f"| {step} | {name} | {_cell(b)} | {_cell(a)} |" for step, name, b, a in rows]
    seconds = sum(m["train"]["wall_seconds"] for m in (sft, reward, ppo))
    lines += ["", f"Wall time of the three runs: {seconds:.0f} s. Each run's own report: "
              f"{', '.join(f'{root / n}/report.md' for n in ('sft', 'reward', 'ppo'))}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/rlhf")
    text = report(root)
    (root / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
