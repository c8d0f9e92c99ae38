"""`tally`: each fault-injection test counts what it injected and resumed. The counts are the source of the
reliability totals in README.md and docs/reliability.md: `scripts/reliability_totals.py` runs these tests
with TUNEFORGE_TALLY_OUT set and writes docs/reliability_totals.json from what they counted; in every other
run (CI's included) each test's count must equal its entry there, so the published totals cannot go stale."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

TOTALS = Path(__file__).parents[2] / "docs" / "reliability_totals.json"


class Tally(Protocol):
    def __call__(self, category: str, *, faults: int = 0, resumed: int = 0) -> None: ...


def test_id(node: pytest.Item) -> str:
    return f"{node.path.name}::{node.name}"


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    counts: dict = {}

    def add(category: str, *, faults: int = 0, resumed: int = 0) -> None:
        assert counts.get("category", category) == category, "one category per test"
        counts.update(category=category, faults=counts.get("faults", 0) + faults,
                      resumed=counts.get("resumed", 0) + resumed)

    yield add
    if not counts:  # the test failed before it counted anything: its own failure says why
        return
    key = test_id(request.node)
    out = os.environ.get("TUNEFORGE_TALLY_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"test": key, **counts}) + "\n")
        return
    committed = json.loads(TOTALS.read_text())["tests"].get(key)
    assert committed == counts, (f"{key} counted {counts}, docs/reliability_totals.json says {committed}: "
                                 "rerun `python scripts/reliability_totals.py` to update the published totals")
