"""Every builder kind through the token cache (data.stage_cache / data.example_kinds): cached train and eval
examples equal the in-memory build (classify, reward pairs, dpo pairs, kto rows, RL prompts, sft), a second load
reuses the cache (and says so), one changed byte of the data, another tokenizer or another max_length rebuilds
it, a bad line in a 100k-row classify file is reported by file:line with nothing cached, and a short training
run of each kind still trains from the cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import tiny
from tuneforge.config.schema import Config
from tuneforge.data import token_cache
from tuneforge.data.dataset import load_train_eval_records
from tuneforge.data.kto_rows import kto_rows_of_pairs
from tuneforge.data.stage_data import load_stage_data, load_stage_examples
from tuneforge.errors import DataError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))  # stage_kit sits beside the stage tests
import stage_kit  # noqa: E402

LONG = " ".join(["hello"] * 80)  # over max_length 48
KINDS = {"classify": "classify", "reward": "scored_pairs", "dpo": "dpo_pairs", "kto": "kto_rows", "grpo": "prompts"}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))  # each test starts without caches
    return tmp_path / "cache"


def _rows(stage: str, seed: int) -> list[dict]:
    """A small data set of the stage's records with one over-length record (pairs: one with chosen == rejected)."""
    if stage == "classify":
        return [*tiny.toy_cls_rows(10, seed=seed), {"text": LONG, "label": "pos"}]
    if stage == "sft":
        return [*tiny.toy_sft_rows(10, seed=seed), {"prompt": LONG, "completion": "yes ."}]
    pairs = stage_kit.preference_pairs(8, seed)
    if stage == "kto":
        return [*kto_rows_of_pairs(pairs), {"prompt": LONG, "completion": "a", "label": True}]
    if stage == "grpo":
        return [{"prompt": p["prompt"], "answer": p["chosen"], "n": k} for k, p in enumerate(pairs)] + [
            {"prompt": LONG, "answer": "x", "n": -1}]
    return [*pairs, {"prompt": "say yes", "chosen": "yes", "rejected": " yes "}, {"prompt": LONG, "chosen": "a",
                                                                                 "rejected": "b"}]


def _cfg(model_dir, tmp_path: Path, stage: str, eval_file: bool = True, **training) -> Config:
    train = tiny.write_jsonl(tmp_path / f"{stage}_train.jsonl", _rows(stage, 0))
    data = {"train": str(train)}
    if eval_file:
        data["eval"] = str(tiny.write_jsonl(tmp_path / f"{stage}_eval.jsonl", _rows(stage, 1)))
    else:
        data["eval_split"] = 0.3
    raw = {"model": str(model_dir), "stage": stage, "data": data, "output_dir": str(tmp_path / "run"),
           "training": {"max_length": 48, "progress": False, "overlength": "truncate", **training},
           "eval": {"max_samples": 7}}
    if stage == "grpo":
        raw["grpo"] = {"rewards": [{"function": "tuneforge.rl.rewards:exact_match"}], "max_new_tokens": 8}
    return Config.model_validate(raw)


def _in_memory(cfg: Config, model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_records, eval_records = load_train_eval_records(cfg, log=lambda _m: None)
    train, stats = load_stage_examples(cfg, tokenizer, train_records)
    evals, eval_stats = load_stage_examples(cfg, tokenizer, eval_records[: cfg.eval.max_samples],
                                            getattr(stats, "labels", None) if cfg.stage == "classify" else None)
    return train, stats, evals, eval_stats


@pytest.mark.parametrize("stage, eval_file, overlength", [
    ("classify", True, "truncate"), ("classify", False, "drop"), ("reward", True, "drop"), ("dpo", True, "truncate"),
    ("dpo", False, "drop"), ("kto", True, "truncate"), ("grpo", True, "truncate"), ("grpo", False, "drop"),
    ("sft", False, "drop")])
def test_cached_examples_equal_the_in_memory_build(tmp_path, tiny_model_dir, stage, eval_file, overlength):
    cfg = _cfg(tiny_model_dir, tmp_path, stage, eval_file, overlength=overlength)
    data = load_stage_data(cfg, AutoTokenizer.from_pretrained(tiny_model_dir), log=lambda _m: None)
    assert isinstance(data.train, token_cache.CachedExamples) and isinstance(data.eval, token_cache.CachedExamples)
    train, stats, evals, eval_stats = _in_memory(cfg, tiny_model_dir)
    assert list(data.train) == train and list(data.eval) == evals
    assert data.train[-1] == train[-1] and data.eval[1:3] == evals[1:3]
    assert data.summary["train"] == stats.summary()
    assert {k: v for k, v in data.summary["eval"].items() if k in eval_stats.summary()} == eval_stats.summary()
    assert data.summary["train"]["dropped_overlength" if overlength == "drop" else "truncated"] >= 1


def _cache_dirs(home: Path) -> int:
    return len([p for p in home.iterdir() if p.is_dir()])


@pytest.mark.parametrize("stage", list(KINDS))
def test_a_second_load_reuses_the_cache_and_a_change_rebuilds_it(tmp_path, tiny_model_dir, stage, monkeypatch):
    cfg = _cfg(tiny_model_dir, tmp_path, stage, eval_file=False)
    built: list[int] = []
    real_build = token_cache.build_cache
    monkeypatch.setattr(token_cache, "build_cache", lambda *a, **k: (built.append(1), real_build(*a, **k)))

    def load(config, tokenizer=None) -> list[str]:
        logs: list[str] = []
        load_stage_data(config, tokenizer or AutoTokenizer.from_pretrained(tiny_model_dir), log=logs.append)
        return logs

    first = load(cfg)
    assert len(built) == 1 and any(line.startswith("data cache: built") for line in first)
    again = load(cfg)
    assert len(built) == 1 and any(line.startswith("data cache: reused") for line in again)

    train = Path(cfg.data.train)
    raw = bytearray(train.read_bytes())
    at = raw.index(b'": "') + 4  # one byte: the first letter of the first text
    raw[at] = ord("x") if raw[at] != ord("x") else ord("y")
    train.write_bytes(bytes(raw))
    load(cfg)
    shorter = cfg.model_copy(deep=True)
    shorter.training.max_length = 40
    load(shorter)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    load(cfg, tokenizer)
    assert len(built) == 4 and _cache_dirs(token_cache.data_cache_dir()) == 4


def test_a_bad_line_in_a_100k_row_classify_file_is_reported_by_line_and_nothing_is_cached(tmp_path, tiny_model_dir,
                                                                                         cache_dir):
    path = tmp_path / "big.jsonl"
    good = json.dumps({"text": "the cat is good", "label": "pos"}) + "\n"
    lines = [good, json.dumps({"text": "the dog is bad", "label": "neg"}) + "\n"] * 50_000
    lines[6] = '{"text": "the sky is\n'  # line 7: malformed JSON
    lines[97_530] = json.dumps({"txt": "no text field", "label": "pos"}) + "\n"  # line 97,531: no text
    path.write_text("".join(lines))
    cfg = Config.model_validate({"model": str(tiny_model_dir), "stage": "classify", "data": {"train": str(path)},
                                 "training": {"progress": False}, "output_dir": str(tmp_path / "run")})
    with pytest.raises(DataError) as err:
        load_stage_data(cfg, AutoTokenizer.from_pretrained(tiny_model_dir), log=lambda _m: None)
    assert f"{path}:7" in str(err.value) and f"{path}:97531" in str(err.value) and err.value.exit_code == 2
    assert _cache_dirs(cache_dir) == 0  # the temporary build was removed


def test_an_eval_label_the_training_data_lacks_names_its_line(tmp_path, tiny_model_dir):
    cfg = _cfg(tiny_model_dir, tmp_path, "classify")
    rows = [*tiny.toy_cls_rows(3, seed=2), {"text": "the fish is odd", "label": "odd"}]
    tiny.write_jsonl(Path(cfg.data.eval), rows)
    with pytest.raises(DataError, match=rf"{cfg.data.eval}:4: label 'odd' is not one of the run's labels"):
        load_stage_data(cfg, AutoTokenizer.from_pretrained(tiny_model_dir), log=lambda _m: None)


@pytest.mark.parametrize("stage", ["classify", "reward", "dpo", "kto", "grpo"])
def test_a_short_run_of_each_kind_trains_from_the_cache(stage, tmp_path, tiny_model_dir):
    files = stage_kit.write_files(tmp_path)
    raw = stage_kit.config("lora", stage, files, tiny_model_dir, tmp_path / "run")
    raw["training"]["max_steps"] = 2
    raw["eval"] = {"before": False, "generate_samples": 0, "max_samples": 4}
    logs: list[str] = []
    captured = stage_kit.run_captured(Config.model_validate(raw), log=logs.append)
    assert any(line.startswith("data cache: built") for line in logs)
    changed = [n for n, p in captured.model.named_parameters() if p.requires_grad
               and not torch.equal(p.detach(), captured.start[n])]
    assert changed, "nothing trained"
    history = [json.loads(line) for line in (captured.out / "train_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 2 and np.isfinite(losses).all(), losses
