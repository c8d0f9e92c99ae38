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

from pathlib import Path

from _tables import cell, read_run
from _tables import main as _main

BEGIN, END = "<!-- preference_table:begin -->", "<!-- preference_table:end -->"
REWARDS = {"dpo": "beta * (log pi - log ref), summed", "kto": "beta * (log pi - log ref), summed",
           "orpo": "beta * mean token log pi", "simpo": "beta * mean token log pi", "cpo": "beta * log pi, summed"}


def _read(run: Path) -> tuple[dict, list[dict]]:
    files = read_run(run, ("metrics.json", "train_log.jsonl"), "examples/preference/...")
    return files["metrics.json"], files["train_log.jsonl"]


def _pair(before: float | None, after: float | None, digits: int) -> str:
    return f"{cell(before, digits)} -> {cell(after, digits)}"


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


def main(argv: list[str] | None = None) -> None:
    _main(argv, __doc__, table, "runs/preference", ("--stages", ["dpo", "kto", "orpo", "simpo", "cpo"]), (BEGIN, END))


if __name__ == "__main__":
    main()
