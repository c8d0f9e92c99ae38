"""The docs/grpo.md table comparing GRPO loss variants, copied from the runs' own files (not typed by hand).

    python scripts/grpo_variants_table.py [runs/grpo_variants] [--variants grpo dr_grpo] [--write docs/grpo.md]

Reads each run's metrics.json (eval before / after: total and per-source reward, KL per completion, length;
seconds per step), config.yaml (loss_type, scale_rewards) and train_log.jsonl (the train-batch reward and TRL's
per-token KL at the first and last step). Prints the markdown table; with --write it replaces the text between
the markers `<!-- grpo_variants:begin -->` and `<!-- grpo_variants:end -->` in that file.
"""

from __future__ import annotations

from pathlib import Path

from _tables import cell as _cell
from _tables import main as _main
from _tables import read_run

BEGIN, END = "<!-- grpo_variants:begin -->", "<!-- grpo_variants:end -->"


def _read(run: Path) -> tuple[dict, dict, list[dict]]:
    files = read_run(run, ("metrics.json", "config.yaml", "train_log.jsonl"), "examples/grpo_variants/...")
    return files["metrics.json"], files["config.yaml"], files["train_log.jsonl"]


def table(root: Path, variants: list[str]) -> str:
    runs = {v: _read(root / v) for v in variants}
    sources = sorted({k for m, _, _ in runs.values() for k in (m["eval_after"].get("rewards") or {})})
    head = "| metric | " + " | ".join(f"{v}: before | {v}: after" for v in variants) + " |"
    lines = [head, "|---|" + "---|---|" * len(variants)]

    def row(label: str, get, digits: int = 3) -> None:
        cells = [f"{_cell(get(m['eval_before']), digits)} | {_cell(get(m['eval_after']), digits)}"
                 for m, _, _ in runs.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def once(label: str, get) -> None:  # one value per run (the "after" column)
        lines.append(f"| {label} | " + " | ".join(f"| {get(*r)}" for r in runs.values()) + " |")

    once("loss_type / scale_rewards", lambda m, c, log: f"{c['grpo']['loss_type']} / {c['grpo']['scale_rewards']}")
    row("eval reward_mean (weighted total)", lambda e: e["reward_mean"])
    for s in sources:
        row(f"eval {s.split(':')[-1]}", lambda e, s=s: (e.get("rewards") or {}).get(s))
    row("eval kl_mean (nats per completion)", lambda e: e["kl_mean"])
    row("eval length_mean (tokens)", lambda e: e["length_mean"], 1)
    once("train-batch reward, step 1 -> last",
         lambda m, c, log: f"{_cell(log[0]['reward'])} -> {_cell(log[-1]['reward'])} (step {log[-1]['step']})")
    once("TRL per-token KL, last step", lambda m, c, log: _cell(log[-1].get("kl"), 4))
    once("seconds per step", lambda m, c, log: _cell(m["train"]["seconds_per_step"], 1))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    _main(argv, __doc__, table, "runs/grpo_variants", ("--variants", ["grpo", "dr_grpo"]), (BEGIN, END))


if __name__ == "__main__":
    main()
