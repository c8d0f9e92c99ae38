"""`tuneforge validate` builds every stage's data with the stage's own reader, check and example builder:
its printed counts equal load_stage_examples' stats for the same config (every stage), dpo counts come from
the dpo builder (not the reward one), a training file is parsed once, and every stage is known to
`tuneforge data check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tiny
from tuneforge.cli import main
from tuneforge.config.load import dump_config
from tuneforge.data.classify import ClsExample
from tuneforge.data.dataset import load_checked_records, load_train_eval_records
from tuneforge.data.dpo_pairs import DpoExample, load_dpo_examples
from tuneforge.data.kto_rows import KtoExample
from tuneforge.data.preference import PairExample, load_pair_examples
from tuneforge.data.stage_data import EXAMPLE_BUILDERS, counts_line, load_stage_data, load_stage_examples
from tuneforge.data.templates import Example
from tuneforge.errors import DataError
from tuneforge.rl.prompts import PromptExample
from tuneforge.stage_info import STAGE_INFO

LONG = " ".join(["hello"] * 300)  # over max_length 128 for every stage: dropped (training.overlength drop)
QA = [(q, a) for q, a in ((f"what color is the {k} ?", f"the {k} is {v} .") for k, v in tiny.COLORS.items())]
REWARDS = {"rewards": [{"function": "tuneforge.rl.rewards:exact_match"}], "max_new_tokens": 8}


def _rows(stage: str, seed: int) -> list[dict]:
    """A tiny data set of the stage's record kind with one over-length record (and, for pairs, one pair with
    chosen == rejected)."""
    kind = STAGE_INFO[stage].records
    if kind == "sft":
        return [*tiny.toy_sft_rows(11, seed=seed), {"prompt": LONG, "completion": "yes ."}]
    if kind == "pretrain":
        return [{"text": f"the {k} is {v} . " * (2 + seed)} for k, v in tiny.COLORS.items()] + [{"text": LONG}]
    if kind == "classify":
        return [*tiny.toy_cls_rows(10, seed=seed), {"text": LONG, "label": "pos"}]
    if kind == "preference":
        pairs = [{"prompt": q, "chosen": a, "rejected": "no ."} for q, a in QA]
        return [*pairs, {"prompt": "say yes", "chosen": "yes", "rejected": " yes "}, {"prompt": LONG, "chosen": "a",
                                                                                     "rejected": "b"}]
    if kind == "kto":  # the pairs' rows: chosen true, rejected false
        rows = [{"prompt": q, "completion": c, "label": c == a} for q, a in QA for c in (a, "no .")]
        return [*rows, {"prompt": LONG, "completion": "a", "label": True}]
    return [*({"prompt": q, "answer": a} for q, a in QA), {"prompt": LONG, "answer": "x"}]


@pytest.fixture
def stage_config(make_config, tmp_path):
    def make(stage: str, **overrides):
        train = tiny.write_jsonl(tmp_path / f"{stage}_train.jsonl", _rows(stage, 0))
        evals = tiny.write_jsonl(tmp_path / f"{stage}_eval.jsonl", _rows(stage, 1))
        block = {f"{stage}": REWARDS} if STAGE_INFO[stage].records == "prompt" else {}
        settings = {"stage": stage, "data__train": str(train), "data__eval": str(evals),
                    "training__overlength": "drop", **{k: v for k, v in block.items()}, **overrides}
        return make_config(**settings)

    return make


def _validate(cfg, tmp_path: Path, capsys) -> tuple[int, str, str]:
    path = tmp_path / f"{cfg.stage}.yaml"
    path.write_text(dump_config(cfg))
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


EXAMPLE_TYPES = {"sft": Example, "pretrain": Example, "classify": ClsExample, "reward": PairExample,
                 "dpo": DpoExample, "ppo": PromptExample, "grpo": PromptExample, "kto": KtoExample,
                 "orpo": DpoExample, "simpo": DpoExample, "cpo": DpoExample}


@pytest.mark.parametrize("stage", list(STAGE_INFO))
def test_validate_prints_the_counts_the_stage_builds(stage, stage_config, tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    overrides = {"data__eval": None, "data__eval_split": 0.25} if stage == "sft" else {}  # the held-out split too
    cfg = stage_config(stage, **overrides)
    code, out, err = _validate(cfg, tmp_path, capsys)
    assert code == 0, err
    # what the stage itself does with the same config (a fresh tokenizer: nothing carried over from validate)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_records, eval_records = load_train_eval_records(cfg, log=lambda _m: None)
    train, train_stats = load_stage_examples(cfg, tokenizer, train_records)
    labels = getattr(train_stats, "labels", None) if stage == "classify" else None
    evals, eval_stats = load_stage_examples(cfg, tokenizer, eval_records[: cfg.eval.max_samples], labels)
    assert counts_line("train", train_stats.summary()) in out.splitlines()
    assert counts_line("eval", eval_stats.summary()) in out.splitlines()
    assert isinstance(train[0], EXAMPLE_TYPES[stage]) and isinstance(evals[0], EXAMPLE_TYPES[stage])
    s, e = train_stats.summary(), eval_stats.summary()
    assert s["records"] == len(train_records) and s["examples"] == len(train)
    identical = s.get("dropped_identical", 0)
    assert identical == (1 if STAGE_INFO[stage].records == "preference" else 0)
    if stage == "sft":  # one file, 25% held out as training holds it out; its one long record is in either part
        assert (s["records"], e["records"]) == (9, 3)
        assert s["dropped_overlength"] + e["dropped_overlength"] == 1
    else:
        assert s["dropped_overlength"] == 1 and s["examples"] == s["records"] - 1 - identical
    assert out.rstrip().endswith(": valid")


def test_every_stage_has_an_example_builder():
    assert {info.examples for info in STAGE_INFO.values()} == set(EXAMPLE_BUILDERS)


def _dpo_length(cfg, tokenizer, record) -> int:
    (example,), _ = load_dpo_examples(cfg, tokenizer, [record])
    return len(example.prompt_ids) + max(len(example.chosen_ids), len(example.rejected_ids))


def test_dpo_counts_come_from_the_dpo_builder(stage_config, tiny_model_dir, tmp_path, capsys):
    """A pair that fits dpo's max_length (prompt + response through EOS) but not the reward stage's (the
    whole rendered conversation): validate for dpo keeps it; the reward builder would have dropped it."""
    from transformers import AutoTokenizer

    cfg = stage_config("dpo", data__eval=None)
    records = load_checked_records(cfg, cfg.data.train, log=lambda _m: None)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    longest = max(_dpo_length(cfg, tokenizer, r) for r in records[:4])
    rows = [*_rows("dpo", 0)[:4], {"prompt": "hi", "chosen": "yes", "rejected": "no"}]  # the last fits both
    path = tiny.write_jsonl(tmp_path / "fits_dpo.jsonl", rows)
    cfg = stage_config("dpo", data__train=str(path), data__eval=None, training__max_length=longest)
    _, reward_stats = load_pair_examples(cfg, tokenizer, load_checked_records(cfg, path, log=lambda _m: None))
    assert 1 <= reward_stats.dropped_overlength < 5  # the reward builder drops the longest pairs
    code, out, err = _validate(cfg, tmp_path, capsys)
    assert code == 0, err
    _, dpo_stats = load_dpo_examples(cfg, tokenizer, load_checked_records(cfg, path, log=lambda _m: None))
    assert dpo_stats.dropped_overlength == 0 and dpo_stats.pairs == 5
    assert counts_line("train", dpo_stats.summary()) in out.splitlines()
    assert "train: 5 examples from 5 records" in out and "0 dropped over length" in out


def test_validate_refuses_a_pair_only_dpo_cannot_use(stage_config, tmp_path, capsys):
    """Conversations whose prompts differ: the reward stage scores them, dpo cannot (no shared prompt)."""
    bad = {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
           "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "c"}]}
    path = tiny.write_jsonl(tmp_path / "pairs.jsonl", [*_rows("dpo", 0)[:2], bad])
    code, out, _ = _validate(stage_config("reward", data__train=str(path), data__eval=None), tmp_path, capsys)
    assert code == 0 and "train: 3 examples from 3 records" in out
    code, _, err = _validate(stage_config("dpo", data__train=str(path), data__eval=None), tmp_path, capsys)
    assert code == 2 and f"{path}:3: " in err and "must share every turn before their last one" in err


def test_eval_set_is_labelled_with_the_train_labels(stage_config, tmp_path):
    from transformers import AutoTokenizer

    positive = [r for r in tiny.toy_cls_rows(6) if r["label"] == "pos"]
    evals = tiny.write_jsonl(tmp_path / "eval_one_label.jsonl", positive)
    cfg = stage_config("classify", data__eval=str(evals))
    data = load_stage_data(cfg, AutoTokenizer.from_pretrained(cfg.model), log=lambda _m: None)
    assert data.labels == ["neg", "pos"] and data.eval_stats.labels == ["neg", "pos"]
    assert {e.label for e in data.eval} == {1}  # "pos" keeps its train id, not 0 of a one-label eval set
    assert set(data.summary) == {"train", "eval"}


def test_a_training_file_is_parsed_once(stage_config, monkeypatch):
    """The check pass and the kept records come from one read: json.loads runs once per line."""
    cfg = stage_config("sft", data__eval=None)
    lines = Path(cfg.data.train).read_text().splitlines()
    calls = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda s, *a, **k: calls.append(1) or real(s, *a, **k))
    records = load_checked_records(cfg, cfg.data.train, log=lambda _m: None)
    assert len(records) == len(lines) == len(calls)


def test_every_unusable_record_at_once_for_prompt_data(stage_config, tmp_path):
    rows = [{"prompt": "ok"}, {"question": "no prompt"}, '{"prompt": ',
            {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        load_checked_records(stage_config("grpo"), path, log=lambda _m: None)
    message = str(err.value)
    assert "3 unusable records" in message and all(f"{path}:{n}" in message for n in (2, 3, 4))


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_data_check_knows_every_stage(stage, tmp_path, capsys):
    clean = tiny.write_jsonl(tmp_path / "prompts.jsonl", _rows(stage, 0))
    assert main(["data", "check", str(clean), "--stage", stage, "--no-progress"]) == 0
    bad = tiny.write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"prompt": [{"role": "assistant",
                                                                                   "content": "x"}]}])
    assert main(["data", "check", str(bad), "--stage", stage, "--no-progress"]) == 1
    assert f"{bad}:2: prompt[0]: 'assistant' where 'user' was expected" in capsys.readouterr().out


def test_dpo_pair_without_a_prompt_is_a_data_error(stage_config, tmp_path, capsys):
    """A chat template cannot render an empty conversation: that used to end in transformers' ValueError (exit 1,
    a traceback); now it is exit 2 naming the record. The reward stage scores such a pair."""
    path = tiny.write_jsonl(tmp_path / "pairs.jsonl", [*_rows("dpo", 0)[:2], {"chosen": "hi there", "rejected": "no"}])
    code, _, err = _validate(stage_config("dpo", data__train=str(path), data__eval=None), tmp_path, capsys)
    assert code == 2 and f"{path}:3: dpo needs a prompt" in err
    code, out, _ = _validate(stage_config("reward", data__train=str(path), data__eval=None), tmp_path, capsys)
    assert code == 0 and "train: 3 examples from 3 records" in out
    with_system = stage_config("dpo", data__train=str(path), data__eval=None, data__system_prompt="be brief")
    code, out, _ = _validate(with_system, tmp_path, capsys)
    assert code == 0 and "train: 3 examples from 3 records" in out


def test_data_code_asks_stage_info_not_stage_names():
    import re

    import tuneforge

    root = Path(tuneforge.__file__).parent
    for path in [*(root / "data").glob("*.py"), *(root / "datatools").glob("*.py"), root / "rl" / "prompts.py"]:
        assert not re.search(r"stage\s*(==|!=)|stage (not )?in \(", path.read_text()), path
