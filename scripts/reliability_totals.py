"""The reliability totals in README.md and docs/reliability.md, counted by the fault tests themselves.

    python scripts/reliability_totals.py            # runs the fault tests (minutes), writes the json and the docs
    python scripts/reliability_totals.py --render   # rewrites the docs' text from the committed json only
    python scripts/reliability_totals.py --check    # exit 1 when the docs' text differs from the json

Each fault-injection test calls the `tally` fixture (tests/reliability/conftest.py) with what it injected and
how many runs it resumed. With TUNEFORGE_TALLY_OUT set the fixture appends those counts to a file; this script
runs the tests that way, requires them all to pass (a failing test means a fault that was not survived), and
writes docs/reliability_totals.json (per test, per category, totals, commit). The text between the markers
`<!-- reliability-totals:begin -->` and `<!-- reliability-totals:end -->` is then rendered from that file.
In every other test run each test's count must equal its entry in the json, so the totals cannot go stale.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOTALS = ROOT / "docs" / "reliability_totals.json"
TESTS = ["test_crash_matrix.py", "test_checkpoint_faults.py", "test_signals.py", "test_resume_guards.py",
         "test_nonfinite_faults.py"]
BEGIN, END = "<!-- reliability-totals:begin -->", "<!-- reliability-totals:end -->"
DOCS = {"README.md": "short", "docs/reliability.md": "long"}


def collect() -> list[dict]:
    """Run the fault tests with the tally written to a file; their counts, one dict per test."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tally.jsonl"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               *[str(ROOT / "tests" / "reliability" / t) for t in TESTS]]
        env = {**os.environ, "TUNEFORGE_TALLY_OUT": str(out), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(cmd, cwd=ROOT, env=env)
        if done.returncode != 0:
            sys.exit(f"the fault tests failed (exit {done.returncode}): no totals written")
        return [json.loads(line) for line in out.read_text().splitlines()]


def summarise(rows: list[dict]) -> dict:
    tests = {r["test"]: {k: r[k] for k in ("category", "faults", "resumed")} for r in rows}
    by_category: dict[str, dict[str, int]] = defaultdict(lambda: {"faults": 0, "resumed": 0})
    for counts in tests.values():
        for key in ("faults", "resumed"):
            by_category[counts["category"]][key] += counts[key]
    totals = {key: sum(c[key] for c in tests.values()) for key in ("faults", "resumed")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"command": "python scripts/reliability_totals.py", "commit": commit.stdout.strip() or None,
            "totals": totals, "by_category": dict(by_category), "tests": dict(sorted(tests.items()))}


def render(summary: dict, form: str) -> str:
    totals, cats = summary["totals"], summary["by_category"]
    if form == "short":
        return f"{totals['faults']} faults injected, {totals['resumed']} runs resumed"

    def parts(key: str) -> str:
        return ", ".join(f"{c[key]} {name}" for name, c in cats.items() if c[key])

    return (f"Totals, counted by the tests themselves (`{summary['command']}` runs them and writes "
            f"`docs/reliability_totals.json`; every test run checks its counts against that file): "
            f"**{totals['faults']} faults injected** ({parts('faults')}), **{totals['resumed']} runs resumed** "
            f"({parts('resumed')}), no loss of a completed checkpoint and no resumed run that differed.")


def rewrite(text: str, new: str, where: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        sys.exit(f"{where}: expected one {BEGIN} ... {END} pair")
    head, rest = text.split(BEGIN)
    return head + BEGIN + new + END + rest.split(END, 1)[1]


def docs_text(summary: dict) -> dict[str, str]:
    """Each doc's full text with its totals rendered from `summary`."""
    return {name: rewrite((ROOT / name).read_text(), render(summary, form), name) for name, form in DOCS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--render", action="store_true", help="rewrite the docs from the committed json")
    mode.add_argument("--check", action="store_true", help="exit 1 if the docs differ from the json")
    args = parser.parse_args(argv)
    if args.render or args.check:
        summary = json.loads(TOTALS.read_text())
    else:
        summary = summarise(collect())
        TOTALS.write_text(json.dumps(summary, indent=1) + "\n")
    for name, text in docs_text(summary).items():
        if args.check:
            if (ROOT / name).read_text() != text:
                print(f"{name}: reliability totals differ from {TOTALS.name}; run with --render", file=sys.stderr)
                return 1
        else:
            (ROOT / name).write_text(text)
    print(render(summary, "long"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
