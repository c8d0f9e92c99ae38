"""The reliability totals in README.md and docs/reliability.md are rendered from docs/reliability_totals.json,
which scripts/reliability_totals.py writes from the fault tests' own counts (tests/reliability/conftest.py's
`tally`; each of those tests also checks its count against the json when it runs)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("reliability_totals", ROOT / "scripts" / "reliability_totals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_published_totals_are_the_json_sums_and_the_docs_show_them():
    script, summary = _script(), json.loads((ROOT / "docs" / "reliability_totals.json").read_text())
    tests = summary["tests"]
    assert {f.split("::")[0] for f in tests} == set(script.TESTS)  # every fault-test file counted
    for key in ("faults", "resumed"):
        assert summary["totals"][key] == sum(t[key] for t in tests.values())
        assert sum(c[key] for c in summary["by_category"].values()) == summary["totals"][key]
    for name, text in script.docs_text(summary).items():
        assert (ROOT / name).read_text() == text, f"{name}: run python scripts/reliability_totals.py --render"
    assert f"{summary['totals']['faults']} faults injected" in (ROOT / "README.md").read_text()


def test_render_and_rewrite(tmp_path):
    script = _script()
    summary = script.summarise([{"test": "a.py::t", "category": "crash", "faults": 3, "resumed": 2},
                                {"test": "b.py::u", "category": "signals", "faults": 1, "resumed": 0}])
    assert summary["totals"] == {"faults": 4, "resumed": 2}
    assert script.render(summary, "short") == "4 faults injected, 2 runs resumed"
    assert "**4 faults injected** (3 crash, 1 signals), **2 runs resumed** (2 crash)" in script.render(summary, "long")
    text = f"before {script.BEGIN}old{script.END} after"
    assert script.rewrite(text, "new", "x") == f"before {script.BEGIN}new{script.END} after"
