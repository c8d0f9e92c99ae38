"""The TRL stages (dpo, kto, grpo) hand their trainer a datasets.Dataset backed by an Arrow file in the token
cache, memory-mapped (data.trl_dataset), not a list built in memory: its rows equal the in-memory path's, the
next run reuses the file without writing it again (and says so), and the stage still trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import stage_kit as kit
from datasets import Dataset
from datasets.table import MemoryMappedTable

import tiny
from tuneforge.data.dpo_pairs import load_dpo_examples
from tuneforge.data.kto_rows import load_kto_examples
from tuneforge.data.load import load_records
from tuneforge.data.token_cache import data_cache_dir
from tuneforge.models import load_tokenizer
from tuneforge.rl.prompts import load_prompt_examples
from tuneforge.stages import STAGES, dpo, grpo
from tuneforge.train import pref_trainers
from tuneforge.train.pref_trainers import kto_rows

LORA = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


@pytest.fixture(autouse=True)
def own_data_cache(tmp_path, monkeypatch):
    """A cache of this test's own: another test's run on the same generated pairs (the suite shares one
    $TUNEFORGE_DATA_CACHE) would already have written the Arrow file this test must see written."""
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "data-cache"))


def run_spied(cfg, module, monkeypatch) -> tuple[Dataset, list[str], Path]:
    """Run the stage, keeping the dataset data.trl_dataset gave its trainer and the log."""
    seen, logs = [], []
    made = module.trl_dataset

    def spy(*args, **kwargs):
        seen.append(made(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(module, "trl_dataset", spy)
    out = STAGES[cfg.stage].run(cfg, log=logs.append)
    assert len(seen) == 1
    return seen[0], logs, Path(out)


def arrow_file(dataset: Dataset) -> Path:
    """The dataset's one on-disk file, checked to be memory-mapped and to lie in the token cache."""
    assert isinstance(dataset.data, MemoryMappedTable), type(dataset.data)
    files = [Path(f["filename"]) for f in dataset.cache_files]
    assert len(files) == 1 and files[0].is_file() and files[0].suffix == ".arrow", files
    assert files[0].parent.parent == data_cache_dir()  # inside the train file's cache entry
    return files[0]


def losses(out: Path) -> list[float]:
    values = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert values and all(math.isfinite(v) for v in values), values
    return values


def assert_reused(cfg, module, path: Path, monkeypatch, tmp_path) -> None:
    """A second run (another output dir) opens the same file, unchanged, and logs the reuse."""
    stamp = path.stat().st_mtime_ns
    again, logs, _ = run_spied(cfg.model_copy(update={"output_dir": str(tmp_path / "again")}), module, monkeypatch)
    assert arrow_file(again) == path and path.stat().st_mtime_ns == stamp
    assert any(f"reused {path}" in line for line in logs), logs
    assert not any(" rows to " in line for line in logs), logs


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_preference_trainer_reads_a_mapped_arrow_file(stage, make_config, tmp_path, monkeypatch):
    files = kit.preference_files(tmp_path, 64, 16)
    cfg = kit.preference_config(make_config, files, stage, method=LORA, training__max_steps=12,
                                output_dir=str(tmp_path / "run"))
    module = dpo if stage == "dpo" else pref_trainers
    dataset, logs, out = run_spied(cfg, module, monkeypatch)
    path = arrow_file(dataset)
    assert any(f"rows to {path}" in line for line in logs), logs

    tok = load_tokenizer(cfg.model)  # the in-memory path: examples from the records, rows as TRL got them
    if stage == "dpo":
        examples, _ = load_dpo_examples(cfg, tok, load_records(cfg.data.train))
        expected = [e.row() for e in examples]
    else:
        examples, _ = load_kto_examples(cfg, tok, load_records(cfg.data.train))
        expected = kto_rows(examples, cfg.training.batch_size, cfg.seed)
    assert len(dataset) == len(expected) and dataset.to_list() == expected
    assert dataset.to_list() == Dataset.from_list(expected).to_list()

    values = losses(out)  # the stage trained on it: finite, falling
    assert len(values) == 12 and sum(values[-3:]) < sum(values[:3]), values
    assert_reused(cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_steps": 2})}),
                  module, path, monkeypatch, tmp_path)


def test_grpo_trainer_reads_a_mapped_arrow_file(make_config, tmp_path, monkeypatch):
    questions = kit.QUESTIONS
    train = tiny.write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in questions * 2])
    block = {"rewards": [{"function": kit.REWARD, "kwargs": {"words": ["the"]}}], "num_generations": 4,
             "max_new_tokens": 4, "beta": 0.04}
    cfg = make_config(stage="grpo", grpo=block, data__train=str(train), data__eval=None, training__batch_size=2,
                      training__max_steps=2, training__max_length=64)
    dataset, logs, out = run_spied(cfg, grpo, monkeypatch)
    path = arrow_file(dataset)
    examples, _ = load_prompt_examples(cfg, load_tokenizer(cfg.model), load_records(cfg.data.train))
    expected = Dataset.from_dict({"prompt": [e.text for e in examples], "index": list(range(len(examples)))})
    assert dataset.to_list() == expected.to_list() and len(dataset) == 16
    assert len(losses(out)) == 2
    assert_reused(cfg, grpo, path, monkeypatch, tmp_path)
