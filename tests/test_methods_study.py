"""bench/methods_study.py's quick mode in CI so issue 19's methods table cannot rot: the hpo grid sweeps three rates
around the method's default_lr on the held-out training rows, the chosen rate is the lowest validation loss, and
the seeds train at it and are judged on the eval file; docs/methods-study.md is the render of the shipped JSON."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("methods_study", ROOT / "bench" / "methods_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_mode_sweeps_chooses_and_runs_the_seeds(tiny_model_dir, tmp_path):
    module = _module()
    out = tmp_path / "m.json"
    report = module.main(["--quick", "--model", str(tiny_model_dir), "--methods", "lora", "--steps", "2",
                          "--seeds", "0,1", "--json", str(out)])
    assert json.loads(out.read_text()) == report
    (lora,) = report["methods"]
    assert [r["lr"] for r in lora["sweep"]] == pytest.approx([2e-3 / 3, 2e-3, 6e-3], rel=1e-2)
    losses = {r["lr"]: r["val_loss"] for r in lora["sweep"]}
    assert all(v is not None and v > 0 for v in losses.values())
    assert lora["chosen_lr"] == min(losses, key=losses.get)
    assert [r["seed"] for r in lora["seeds"]] == [0, 1]
    for run in lora["seeds"]:
        assert run["eval_loss"] > 0 and 0.0 <= run["exact_match"] <= 1.0
    assert lora["eval_loss"]["min"] <= lora["eval_loss"]["median"] <= lora["eval_loss"]["max"]
    assert report["val_rows"] == 8 and report["eval_rows"] == 4 and report["environment"]["git"]


def test_the_docs_table_is_the_render_of_the_study():
    module = _module()
    assert (ROOT / "docs" / "methods-study.md").read_text() == module.render()
