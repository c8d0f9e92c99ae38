"""The docs/preference.md table comparing dpo, kto, orpo, simpo and cpo, copied from the runs' own files (not
typed by hand).

    python scripts/preference_table.py [runs/preference] [--stages dpo kto orpo simpo cpo] [--write docs/preference.md]

Reads each run's metrics.json (eval before / after on the held-out pairs: reward accuracy and margin as the
objective defines its reward, log-prob accuracy, mean log-probs, the objective's loss; seconds per step) and
train_log.jsonl (the train loss at the first and last step). kto's rows are the same pairs unpaired, so its
desirable / undesirable log-probs stand in the chosen / rejected columns. Prints the markdown table; with
--write it replaces the text between `<!-- preference_table:begin -->` and `<!-- preference_table:end -->`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- preference_table:begin -->", "<!-- preference_table:end -->"
REWARDS = {"dpo": "beta * (log pi - log ref), summed", "kto": "beta * (log pi - log ref), summed",
           "orpo": "beta * mean token log pi", "simpo": "beta * mean token log pi", "cpo": "beta * log pi, summed"}


def _read(run: Path) -> tuple[dict, list[dict]]:
    for name in ("metrics.json", "train_log.jsonl"):
        if not (run / name).is_file():
            sys.exit(f"{run / name}: missing; run the example first (tuneforge train examples/preference/...)")
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    return json.loads((run / "metrics.json").read_text()), log


def _pair(before: float | None, after: float | None, digits: int) -> str:
    cell = (lambda v: "-" if v is None else f"{v:.{digits}f}")  # noqa: E731
    return f"{cell(before)} -> {cell(after)}"


def table(root: Path, stages: list[str]) -> str:
    lines = ["| objective | reward | reward_accuracy | reward_margin | logp_accuracy | chosen / rejected logp (after) "
             "| eval loss | train loss, step 1 -> last | s / step |", "|---|---|---|---|---|---|---|---|---|"]
    for stage in stages:
        m, log = _read(root / stage)
        b, a = m["eval_before"] or {}, m["eval_after"]
        chosen, rejected = (a.get(k, a.get(alt)) for k, alt in (("chosen_logp", "desirable_logp"),
                                                                 ("rejected_logp", "undesirable_logp")))
        steps = m["train"]["steps"]
        cells = [stage, REWARDS.get(stage, "-"), _pair(b.get("reward_accuracy"), a["reward_accuracy"], 2),
                 _pair(b.get("reward_margin"), a["reward_margin"], 3),
                 _pair(b.get("logp_accuracy"), a["logp_accuracy"], 2), f"{chosen:.1f} / {rejected:.1f}",
                 _pair(b.get("loss"), a["loss"], 3), f"{log[0]['loss']:.3f} -> {log[-1]['loss']:.3f} ({steps} steps)",
                 f"{m['train']['train_seconds'] / max(steps, 1):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(doc: Path, text: str) -> None:
    old = doc.read_text()
    if BEGIN not in old or END not in old:
        sys.exit(f"{doc}: has no {BEGIN} ... {END} markers")
    start, end = old.index(BEGIN) + len(BEGIN), old.index(END)
    doc.write_text(old[:start] + "\n" + text + "\n" + old[end:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="runs/preference", type=Path)
    parser.add_argument("--stages", nargs="+", default=["dpo", "kto", "orpo", "simpo", "cpo"])
    parser.add_argument("--write", type=Path, help="a markdown file with the markers")
    args = parser.parse_args(argv)
    text = table(args.root, args.stages)
    if args.write:
        write(args.write, text)
    print(text)


if __name__ == "__main__":
    main()
