"""docs/benchmarks.md's session-18 figures (a busy core beside a run; frozen_bf16 on the DPO stage) are their JSONs'."""

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


def test_the_dpo_frozen_bf16_figures_are_the_json():
    """docs/benchmarks.md's session-18 DPO paragraph (training.frozen_bf16 on the TRL bridge)."""
    import statistics

    text = " ".join((ROOT / "docs" / "benchmarks.md").read_text().split())
    runs = json.loads((ROOT / "bench" / "results" / "frozen_bf16_dpo_s18.json").read_text())["runs"]
    for held, word in ((True, "held"), (False, "not")):
        rss = [r["peak_rss_mb"] for r in runs if r["frozen_bf16"] is held]
        assert f"{statistics.median(rss):,} MB ({min(rss):,}-{max(rss):,}) {word}" in text
    assert len({(r["final_loss"], r["eval_loss"]) for r in runs}) == 1 and len(runs) == 6  # the same in all six
    assert f"final training loss ({runs[0]['final_loss']:.6f})" in text
