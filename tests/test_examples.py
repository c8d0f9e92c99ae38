"""Every shipped example config validates, its data exists, and the generators reproduce the data."""

import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.config.load import load_config
from tuneforge.data.classify import label_set, load_cls_examples
from tuneforge.data.dataset import load_examples
from tuneforge.data.load import load_records
from tuneforge.stages.lm import check_config

ROOT = Path(__file__).resolve().parents[1]
# Other tools' configs live beside ours and are tested where they are used (lm-eval tasks, accelerate).
FOREIGN = {"lm_eval", "accelerate", "hpo"}  # hpo: search spaces, validated in tests/hpo
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("**/*.yaml") if not FOREIGN & set(p.relative_to(ROOT).parts))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"quickstart.yaml", "pretrain.yaml", "classify.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path, monkeypatch, tiny_tokenizer):
    monkeypatch.chdir(ROOT)
    header = path.read_text().splitlines()[:3]
    assert [h.split(":")[0] for h in header] == ["# What", "# Run", "# Override any key"]
    cfg = load_config(path)
    check_config(cfg)
    for split in ("train", "eval"):
        file = getattr(cfg.data, split)
        if not file:
            continue
        if cfg.stage == "classify":  # every row has a text and one of the configured labels
            records = load_records(file)
            examples, stats = load_cls_examples(cfg, tiny_tokenizer, records, label_set(cfg, records))
        else:  # every record parses and formats; the tiny tokenizer stands in for speed
            examples, stats = load_examples(cfg, tiny_tokenizer, file)
        assert examples and stats.records == stats.examples


@pytest.mark.parametrize("script,folder", [("make_quickstart_data.py", "quickstart"), ("make_pretrain_data.py", "pretrain"),
                                           ("make_sentiment_data.py", "sentiment")])
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


def test_sentiment_rules_defeat_the_keyword_baseline():
    """The example is only worth tuning for if counting sentiment words is not enough: negation and
    contrast make the keyword baseline wrong on a large share of rows, and every label is well represented."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import make_sentiment_data as gen

    rows = [json.loads(x) for x in (ROOT / "examples/data/sentiment/eval.jsonl").read_text().splitlines()]
    assert gen.keyword_label("The lid is great.") == "positive" and gen.keyword_label("The lid is not great.") == "positive"
    assert 0.45 < gen.keyword_accuracy(ROOT / "examples/data/sentiment/eval.jsonl") < 0.7
    counts = {label: sum(r["label"] == label for r in rows) for label in ("negative", "neutral", "positive")}
    assert min(counts.values()) > 0.25 * len(rows)
    train = (ROOT / "examples/data/sentiment/train.jsonl").read_text()
    assert not any(p in train for p in gen.EVAL_PRODUCTS)  # eval products are held out
