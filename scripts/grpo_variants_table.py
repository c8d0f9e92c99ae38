"""The docs/grpo.md table comparing GRPO loss variants, copied from the runs' own files (not typed by hand).

    python scripts/grpo_variants_table.py [runs/grpo_variants] [--variants grpo dr_grpo] [--write docs/grpo.md]

Reads each run's metrics.json (eval before / after: total and per-source reward, KL per completion, length;
seconds per step), config.yaml (loss_type, scale_rewards) and train_log.jsonl (the train-batch reward and TRL's
per-token KL at the first and last step). Prints the markdown table; with --write it replaces the text between
the markers `<!-- grpo_variants:begin -->` and `<!-- grpo_variants:end -->` in that file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

BEGIN, END = "<!-- grpo_variants:begin -->", "<!-- grpo_variants:end -->"


def _read(run: Path) -> tuple[dict, dict, list[dict]]:
    for name in ("metrics.json", "config.yaml", "train_log.jsonl"):
        if not (run / name).is_file():
            sys.exit(f"{run / name}: missing; run the example first (tuneforge train examples/grpo_variants/...)")
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    return json.loads((run / "metrics.json").read_text()), yaml.safe_load((run / "config.yaml").read_text()), log


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


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


def write(doc: Path, text: str) -> None:
    old = doc.read_text()
    if BEGIN not in old or END not in old:
        sys.exit(f"{doc}: has no {BEGIN} ... {END} markers")
    start, end = old.index(BEGIN) + len(BEGIN), old.index(END)
    doc.write_text(old[:start] + "\n" + text + "\n" + old[end:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="runs/grpo_variants", type=Path)
    parser.add_argument("--variants", nargs="+", default=["grpo", "dr_grpo"])
    parser.add_argument("--write", type=Path, help="a markdown file with the markers")
    args = parser.parse_args(argv)
    text = table(args.root, args.variants)
    if args.write:
        write(args.write, text)
    print(text)


if __name__ == "__main__":
    main()
