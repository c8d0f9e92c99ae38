"""Write the measured table of the tool-calling example into docs/tools.md, copied from the run's outputs
(metrics.json, generations.jsonl), never typed: tool-call exact match (same function, same parsed arguments),
exact text match and loss on the held-out rows, before and after training, and a few generations.

    python scripts/tools_report.py [runs/tools] [docs/tools.md]

Replaces what lies between the `<!-- tools-report -->` markers of the doc (appends them when absent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing
from tuneforge.data.tools import same_calls  # noqa: E402  (the metric's own comparison)

BEGIN, END = "<!-- tools-report -->", "<!-- /tools-report -->"
METRICS = ("tool_call_match", "exact_match", "loss")


def _cell(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _code(text: str) -> str:
    return "`" + " ".join(text.split()).replace("|", "\\|").replace("`", "'") + "`" if text.strip() else "(empty)"


def report(run: Path) -> str:
    metrics = json.loads((run / "metrics.json").read_text())
    before, after, train = metrics["eval_before"], metrics["eval_after"], metrics["train"]
    data = metrics.get("data", {}).get("eval", {})
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines() if line.strip()]
    lines = [f"Held-out rows: {data.get('generated', len(rows))} generated (eval.generate_samples), greedy, the "
             f"call compared after parsing. Training: {train['steps']} LoRA steps, "
             f"{train['wall_seconds']:.0f} s wall on this machine ({train['tokens']:,} tokens, "
             f"{train['supervised_tokens']:,} supervised), precision {train['precision']}.", "",
             "| held-out rows | before (base) | after (tuned) |", "|---|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {_cell(before.get(name))} | {_cell(after.get(name))} |"
              for name in METRICS]
    misses = [r for r in rows if not same_calls(r["tuned"], r["reference"])]
    shown = rows[:3] + [r for r in misses if r not in rows[:3]]
    lines += ["", f"The first rows and every row the tuned model got wrong ({len(misses)} of {len(rows)}):", "",
              "| question | reference call | base | tuned | tuned right |", "|---|---|---|---|---|"]
    lines += [f"| {_code(r['question'])} | {_code(r['reference'])} | {_code(r['base'])} | {_code(r['tuned'])} | "
              f"{'no' if r in misses else 'yes'} |" for r in shown]
    return "\n".join(lines) + "\n"


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tools")
    doc = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/tools.md")
    table = f"{BEGIN}\n{report(run)}{END}"
    text = doc.read_text() if doc.is_file() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + table + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    doc.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
