"""docs/benchmarks.md's "A busy core beside a run" table and ratios are bench/results/contention.json's."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_and_ratios_are_the_json():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    section = text.split("## A busy core beside a run", 1)[1].split("\n## ", 1)[0]
    saved = json.loads((ROOT / "bench" / "results" / "contention.json").read_text())
    labels = {"idle/2": "| idle | 2 |", "busy/2": "| one core busy | 2 |", "busy/1": "| one core busy | 1 |"}
    for key, label in labels.items():
        c = saved["cases"][key]
        assert f"{label} {c['median_s']:.2f} ({c['min_s']:.2f}-{c['max_s']:.2f}) |" in section
    assert f"**{saved['busy2_over_idle2']:.2f}x**" in section and f"**{saved['busy2_over_busy1']:.2f}x**" in section
    assert saved["environment"]["cpu"]["flags_of_interest"]["amx_bf16"] and "AMX Xeon" in section
