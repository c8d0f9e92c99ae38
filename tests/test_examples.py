"""Every shipped example config validates, its data exists, and the generators reproduce the data."""

import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.config.load import load_config
from tuneforge.data.dataset import load_examples
from tuneforge.stages.lm import check_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("**/*.yaml"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"quickstart.yaml", "pretrain.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path, monkeypatch, tiny_tokenizer):
    monkeypatch.chdir(ROOT)
    header = path.read_text().splitlines()[:3]
    assert [h.split(":")[0] for h in header] == ["# What", "# Run", "# Override any key"]
    cfg = load_config(path)
    check_config(cfg)
    for split in ("train", "eval"):
        file = getattr(cfg.data, split)
        if file:  # every record parses and formats; the tiny tokenizer stands in for speed
            examples, stats = load_examples(cfg, tiny_tokenizer, file)
            assert examples and stats.records == stats.examples


@pytest.mark.parametrize("script,folder", [("make_quickstart_data.py", "quickstart"), ("make_pretrain_data.py", "pretrain")])
def test_generators_reproduce_shipped_data(script, folder, tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--out", str(tmp_path)], check=True, capture_output=True)
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (ROOT / "examples" / "data" / folder / name).read_bytes()


def test_quickstart_eval_vocabulary_is_held_out():
    import json

    rows = {s: [json.loads(x) for x in (ROOT / "examples/data/quickstart" / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "eval")}
    train_names = {json.loads(r["output"])["name"] for r in rows["train"]}
    assert not train_names & {json.loads(r["output"])["name"] for r in rows["eval"]}
