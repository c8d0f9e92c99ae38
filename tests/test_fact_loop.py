"""bench/fact_loop.py's quick mode in CI so the issue-20 reference cannot rot: the 40-line loop and tuneforge (with the
loop's explicit settings, and loop-like) both train on 16 facts with the tiny model and are judged alike; the JSON
records the settings each ran with and a figure per run."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_mode_runs_both_and_records_the_settings(tiny_model_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("fact_loop", ROOT / "bench" / "fact_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "fact_loop.json"
    report = module.main(["--quick", "--loop-like", "--model", str(tiny_model_dir), "--json", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["facts"] == 16 and report["settings"]["epochs"] == 2 and report["settings"]["lr"] == 1e-3
    (run,) = report["results"]
    for key in ("loop", "tuneforge", "tuneforge_loop_like"):
        assert 0.0 <= run[key] <= 1.0
    for key in ("loop_s", "tuneforge_s", "loop_like_s"):
        assert run[key] > 0
    assert report["environment"]["git"] and report["arms"] == ["loop", "tuneforge"]
    one = module.main(["--quick", "--arms", "tuneforge", "--model", str(tiny_model_dir)])["results"][0]
    assert one["loop"] is None and one["loop_s"] is None and 0.0 <= one["tuneforge"] <= 1.0


def test_the_docs_table_is_the_render_of_the_runs():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("fact_loop", ROOT / "bench" / "fact_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "fact-loop.md").read_text() == module.render()
