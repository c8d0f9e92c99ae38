"""README's quickstart seed spread is bench/results/quickstart_seeds_s17.json's, not typed: three seeds of the
shipped quickstart config, each learnt from 0 exact matches."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_quotes_the_quickstart_seeds_json():
    runs = json.loads((ROOT / "bench" / "results" / "quickstart_seeds_s17.json").read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1, 2]
    assert all(r["exact_match_before"] == 0.0 and r["exact_match_after"] >= 0.9 and r["steps"] == 60 for r in runs)
    figures = ", ".join(f"{r['exact_match_after']:g}" for r in runs[:-1]) + f" and {runs[-1]['exact_match_after']:g}"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"with seeds 0, 1 and 2: {figures}, `bench/results/quickstart_seeds_s17.json`" in readme
