"""Tabulate the adapter-merging example (docs/merge.md): each task's metrics for the base model, adapter A,
adapter B and their combinations, copied from the `tuneforge eval` outputs (eval.json), never typed.

    python scripts/merge_report.py [runs/merge]      # prints the markdown table; writes runs/merge/report.md

Expects ROOT/eval-TASK-TARGET/eval.json for TASK in orders, dates and TARGET the task's own adapter run (base
and tuned; the other task's adapter is optional, "-" when absent) and each combination directory (one model),
as the commands in docs/merge.md write them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASKS = ("orders", "dates")
METRICS = ("exact_match", "loss")


def _models(path: Path) -> dict[str, dict]:
    if not path.is_file():
        sys.exit(f"{path}: missing; run the commands in docs/merge.md first")
    return json.loads(path.read_text())["models"]


def _merge_note(model_dir: Path) -> str:
    info = json.loads((model_dir / "merge.json").read_text())
    density = f", density {info['density']}" if info.get("density") is not None else ""
    return (f"{info['how']} {','.join(f'{w:g}' for w in info['weights'])}{density} "
            f"(verified: max logit diff {info['max_abs_logit_diff']:.1e})")


def _cell(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def report(root: Path) -> str:
    combos = sorted(p.name for p in root.iterdir() if (p / "merge.json").is_file())
    rows: dict[str, dict[str, dict]] = {"base (smollm2-135m-instruct)": {}}  # model label -> task -> metrics
    rows.update({f"adapter {run}": {} for run in TASKS})  # base, the adapters, then the combinations
    for task in TASKS:
        for run in TASKS:  # an adapter run's eval holds the base model and the tuned one
            path = root / f"eval-{task}-{run}" / "eval.json"
            if run != task and not path.is_file():  # the other task's adapter on this task: optional
                continue
            models = list(_models(path).values())
            rows.setdefault("base (smollm2-135m-instruct)", {})[task] = models[0]
            rows.setdefault(f"adapter {run}", {})[task] = models[-1]
        for combo in combos:
            label = f"{combo}: {_merge_note(root / combo)}"
            rows.setdefault(label, {})[task] = list(_models(root / f"eval-{task}-{combo}" / "eval.json").values())[0]
    head = " | ".join(f"{task} {m.replace('_', ' ')}" for task in TASKS for m in METRICS)
    lines = [f"| model | {head} |", "|---" * (1 + len(TASKS) * len(METRICS)) + "|"]
    for label, by_task in rows.items():
        cells = [_cell(by_task.get(t, {}).get(m)) for t in TASKS for m in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/merge")
    text = report(root)
    (root / "report.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
