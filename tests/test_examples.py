"""Every shipped example config validates, its data exists, and the generators reproduce the data."""

import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.config.checks import check_config
from tuneforge.config.load import load_config
from tuneforge.data.dataset import load_checked_records
from tuneforge.data.stage_data import load_stage_examples
from tuneforge.rl.rewards import load_rewards

ROOT = Path(__file__).resolve().parents[1]
# Other tools' configs live beside ours and are tested where they are used (lm-eval tasks, accelerate).
FOREIGN = {"lm_eval", "accelerate", "hpo"}  # hpo: search spaces, validated in tests/hpo
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("**/*.yaml") if not FOREIGN & set(p.relative_to(ROOT).parts))
OUTPUTS = {load_config(p).output_dir for p in EXAMPLES}


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"quickstart.yaml", "pretrain.yaml", "classify.yaml", "sft_mix.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path, monkeypatch, tiny_tokenizer):
    monkeypatch.chdir(ROOT)
    header = path.read_text().splitlines()[:3]
    assert [h.split(":")[0] for h in header] == ["# What", "# Run", "# Override any key"]
    cfg = load_config(path)
    check_config(cfg)
    for split in ("train", "eval"):
        value = getattr(cfg.data, split)
        for file in value if isinstance(value, list) else [value] if value else []:  # a mix: every source
            file = getattr(file, "path", file)  # every record parses and builds; the tiny tokenizer for speed
            examples, stats = load_stage_examples(cfg, tiny_tokenizer, load_checked_records(cfg, file))
            assert examples and stats.summary()["records"] == stats.summary()["examples"]
    block = getattr(cfg, cfg.stage, None)
    for source in getattr(block, "rewards", []):
        if source.function:  # importable now; a reward run must be another example's output
            load_rewards([source], "rewards")
        else:
            assert source.run in OUTPUTS, f"{path.name}: reward run {source.run} is no example's output_dir"
    if not Path(cfg.model).is_dir() and "/" in cfg.model:  # chained: an earlier example's run
        assert cfg.model in OUTPUTS, f"{path.name}: model {cfg.model} is no example's output_dir"


@pytest.mark.parametrize("script,folder", [("make_quickstart_data.py", "quickstart"),
                                           ("make_pretrain_data.py", "pretrain"),
                                           ("make_sentiment_data.py", "sentiment"), ("make_rlhf_data.py", "rlhf"),
                                           ("make_tools_data.py", "tools"), ("make_preference_data.py", "preference")])
def test_generators_reproduce_shipped_data(script, folder, tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    shipped = sorted(p.name for p in (ROOT / "examples" / "data" / folder).glob("*.jsonl"))
    assert shipped and sorted(p.name for p in tmp_path.glob("*.jsonl")) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (ROOT / "examples" / "data" / folder / name).read_bytes()


def test_rlhf_questions_do_not_leak_across_files():
    """The reward model and PPO are judged on questions neither saw in training."""
    import json

    def questions(name: str, key: str) -> set[str]:
        return {json.loads(x)[key] for x in (ROOT / "examples/data/rlhf" / name).read_text().splitlines()}

    seen = questions("sft_train.jsonl", "instruction") | questions("prefs_train.jsonl", "prompt") | questions(
        "prompts_train.jsonl", "prompt")
    assert not seen & (questions("prompts_eval.jsonl", "prompt") | questions("sft_eval.jsonl", "instruction"))
    assert len(questions("prefs_eval.jsonl", "prompt") - seen) == 24


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
    assert (gen.keyword_label("The lid is great.") == "positive"
            and gen.keyword_label("The lid is not great.") == "positive")
    assert 0.45 < gen.keyword_accuracy(ROOT / "examples/data/sentiment/eval.jsonl") < 0.7
    counts = {label: sum(r["label"] == label for r in rows) for label in ("negative", "neutral", "positive")}
    assert min(counts.values()) > 0.25 * len(rows)
    train = (ROOT / "examples/data/sentiment/train.jsonl").read_text()
    assert not any(p in train for p in gen.EVAL_PRODUCTS)  # eval products are held out


def test_the_readmes_config_block_validates(tmp_path, monkeypatch):
    """README.md's "### Config" block is a config a user could copy: it loads and checks (every key it shows is
    a real one), and the method alternatives in its comments are valid methods too."""
    import re

    import yaml

    text = (ROOT / "README.md").read_text()
    block = text.split("### Config", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    (tmp_path / "readme.yaml").write_text(block)
    cfg = load_config(tmp_path / "readme.yaml")
    check_config(cfg)
    assert cfg.training.frozen_bf16 is True and cfg.method.name == "lora"
    alternatives = re.findall(r"(\{name: [^}]*\})", block.split("# or ", 1)[1].split("\ndata:", 1)[0])
    assert len(alternatives) == 7
    for method in alternatives:
        raw = yaml.safe_load(block)
        raw["method"] = yaml.safe_load(method)
        (tmp_path / "alt.yaml").write_text(yaml.safe_dump(raw))
        assert load_config(tmp_path / "alt.yaml").method.name == raw["method"]["name"]
