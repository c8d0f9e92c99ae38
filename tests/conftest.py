import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny.build_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def toy_data(tmp_path) -> dict[str, Path]:
    rows = tiny.toy_sft_rows(42)
    return {
        "train": tiny.write_jsonl(tmp_path / "train.jsonl", rows),
        "eval": tiny.write_jsonl(tmp_path / "eval.jsonl", tiny.toy_sft_rows(7, seed=1)[:7]),
    }


@pytest.fixture
def make_config(tmp_path, tiny_model_dir, toy_data):
    """A config dict for the tiny model and toy data; tests override what they need."""

    def make(**overrides):
        from tuneforge.config.schema import Config

        raw = {
            "model": str(tiny_model_dir),
            "stage": "sft",
            "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
            "data": {"train": str(toy_data["train"]), "eval": str(toy_data["eval"])},
            "training": {"max_steps": 30, "learning_rate": 3e-2, "batch_size": 4, "warmup_ratio": 0.0,
                         "lr_scheduler": "constant", "max_length": 128, "progress": False, "precision": "fp32"},
            "eval": {"generate_samples": 3, "max_new_tokens": 12},
            "output_dir": str(tmp_path / "run"),
            "seed": 0,
        }
        for key, value in overrides.items():
            node = raw
            parts = key.split("__")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        return Config.model_validate(raw)

    return make


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return tiny.build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def cls_data(tmp_path) -> dict[str, Path]:
    return {
        "train": tiny.write_jsonl(tmp_path / "cls_train.jsonl", tiny.toy_cls_rows(64)),
        "eval": tiny.write_jsonl(tmp_path / "cls_eval.jsonl", tiny.toy_cls_rows(24, seed=1)),
    }
