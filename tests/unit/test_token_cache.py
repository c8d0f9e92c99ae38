"""The tokenized data cache (data.token_cache): sft / pretrain examples read from it equal the in-memory build,
a second load reuses it without tokenizing (and says so), one changed byte of data, another tokenizer or
another max_length rebuilds it, and a bad line deep in a 100k-row file is reported by line number with nothing
left in the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tiny
from tuneforge.config.schema import Config
from tuneforge.data import cache_keys, token_cache
from tuneforge.data.dataset import load_train_eval_records
from tuneforge.data.stage_data import load_stage_data, load_stage_examples
from tuneforge.errors import DataError


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNEFORGE_DATA_CACHE", raising=False)  # the cache under this home
    return tmp_path / "home"


def _pretrain_rows(n: int = 6) -> list[dict]:
    return [{"text": f"the {k} is {v} . " * (5 + 7 * i)} for i, (k, v) in enumerate(list(tiny.COLORS.items()) * n)]


def _cfg(tiny_model_dir, train: Path, stage: str = "sft", **training) -> Config:
    return Config.model_validate({
        "model": str(tiny_model_dir), "stage": stage, "data": {"train": str(train)},
        "training": {"max_length": 48, "progress": False, **training}, "output_dir": "unused"})


def _in_memory(cfg, tokenizer):
    train_records, eval_records = load_train_eval_records(cfg, log=lambda _m: None)
    train, stats = load_stage_examples(cfg, tokenizer, train_records)
    return train, stats, eval_records


@pytest.mark.parametrize("stage, overlength, eval_split", [("sft", "truncate", 0.0), ("sft", "drop", 0.2),
                                                           ("pretrain", "split", 0.0), ("pretrain", "truncate", 0.25)])
def test_cached_examples_equal_the_in_memory_build(tmp_path, tiny_model_dir, tiny_tokenizer, stage, overlength,
                                                   eval_split):
    rows = tiny.toy_sft_rows(30) if stage == "sft" else _pretrain_rows()
    train = tiny.write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = _cfg(tiny_model_dir, train, stage, overlength=overlength, max_length=34 if stage == "sft" else 48)
    cfg.data.eval_split = eval_split
    data = load_stage_data(cfg, tiny_tokenizer, log=lambda _m: None)
    assert isinstance(data.train, token_cache.CachedExamples)
    expected, stats, eval_records = _in_memory(cfg, tiny_tokenizer)
    assert list(data.train) == expected
    assert [data.train[i] for i in (0, -1)] == [expected[0], expected[-1]]
    assert [r.where for r in data.eval_records] == [r.where for r in eval_records]
    summary, want = data.summary["train"], stats.summary()
    for key in ("records", "examples", "tokens", "supervised_tokens", "length_mean", "length_max", "format"):
        assert summary[key] == want[key], key
    if not eval_split:
        assert summary == want


def test_a_second_load_reuses_the_cache_and_a_change_rebuilds_it(tmp_path, tiny_model_dir, tiny_tokenizer,
                                                                 monkeypatch):
    train = tiny.write_jsonl(tmp_path / "train.jsonl", _pretrain_rows())
    cfg = _cfg(tiny_model_dir, train, "pretrain")
    logs: list[str] = []
    first = load_stage_data(cfg, tiny_tokenizer, log=logs.append)
    assert any(line.startswith("data cache: built") for line in logs)

    built = []
    real_build = token_cache.build_cache
    monkeypatch.setattr(token_cache, "build_cache", lambda *a, **k: (built.append(1), real_build(*a, **k)))
    logs.clear()
    again = load_stage_data(cfg, tiny_tokenizer, log=logs.append)
    assert not built and any(line.startswith("data cache: reused") for line in logs)
    assert list(again.train) == list(first.train) and again.summary == first.summary

    def rebuilt(config, tokenizer=tiny_tokenizer) -> bool:
        before = len(built)
        load_stage_data(config, tokenizer, log=lambda _m: None)
        return len(built) == before + 1

    raw = bytearray(train.read_bytes())
    raw[raw.index(b"sky") + 1] = ord("x")  # one byte: "sky" -> "sxy"
    train.write_bytes(bytes(raw))
    assert rebuilt(cfg)
    assert rebuilt(_cfg(tiny_model_dir, train, "pretrain", max_length=40))
    tiny_tokenizer.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert rebuilt(cfg, tiny_tokenizer)
    assert not rebuilt(cfg, tiny_tokenizer)  # and that one is kept too
    assert len([p for p in (tmp_path / "home" / "data").iterdir() if p.is_dir()]) == 4


def test_a_bad_line_in_a_100k_row_file_is_reported_by_line_and_nothing_is_cached(tmp_path, tiny_model_dir,
                                                                                   tiny_tokenizer):
    path = tmp_path / "big.jsonl"
    good = json.dumps({"text": "the sky is blue ."}) + "\n"
    lines = [good] * 100_000
    lines[6] = '{"text": "the sky is\n'  # line 7: malformed JSON
    lines[97_530] = json.dumps({"txt": "no text field"}) + "\n"  # line 97,531: the field is missing
    path.write_text("".join(lines))
    with pytest.raises(DataError) as err:
        load_stage_data(_cfg(tiny_model_dir, path, "pretrain"), tiny_tokenizer, log=lambda _m: None)
    assert f"{path}:7" in str(err.value) and f"{path}:97531" in str(err.value)
    assert not [p for p in (tmp_path / "home" / "data").iterdir() if p.is_dir()]  # the temporary build was removed


def test_pretrain_splits_by_default_so_every_corpus_token_is_used(tmp_path, tiny_model_dir, tiny_tokenizer):
    train = tiny.write_jsonl(tmp_path / "train.jsonl", _pretrain_rows(2))
    assert _cfg(tiny_model_dir, train, "sft").training.overlength == "truncate"
    assert _cfg(tiny_model_dir, train, "pretrain", overlength="truncate").training.overlength == "truncate"
    cfg = _cfg(tiny_model_dir, train, "pretrain")
    assert cfg.training.overlength == "split"
    summary = load_stage_data(cfg, tiny_tokenizer, log=lambda _m: None).summary["train"]
    assert summary["split_chunks"] > 0 and summary["truncated"] == 0
    assert summary["tokens"] == summary["corpus_tokens"] and summary["corpus_tokens_used"] == 1.0
    cut = load_stage_data(_cfg(tiny_model_dir, train, "pretrain", overlength="truncate"), tiny_tokenizer,
                          log=lambda _m: None).summary["train"]
    assert cut["corpus_tokens"] == summary["corpus_tokens"] and cut["tokens"] < cut["corpus_tokens"]


def test_the_file_hash_is_remembered_by_stat_and_a_change_is_always_seen(tmp_path, monkeypatch):
    """A second hash of an unchanged file reads none of it (the memo beside the caches); a rewrite of the same
    size, a same-size rewrite with the old mtime put back, or a file changed just before its hashing began (the
    racy window) is hashed again."""
    import hashlib
    import os
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"text": "aaaa"}\n')
    reads = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        if Path(path) == data:
            reads.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    truth = hashlib.sha256(data.read_bytes()).hexdigest()
    # just written: inside the racy window, so hashed every time and never served from the memo
    assert token_cache.file_sha256(data) == truth and token_cache.file_sha256(data) == truth and len(reads) == 2
    monkeypatch.setattr(cache_keys, "RACY_S", 0.0)
    assert token_cache.file_sha256(data) == truth and len(reads) == 3  # hashed, remembered
    assert token_cache.file_sha256(data) == truth and len(reads) == 3  # served from the memo: not read
    old = os.stat(data)
    data.write_text('{"text": "bbbb"}\n')  # same size, new bytes
    os.utime(data, ns=(old.st_atime_ns, old.st_mtime_ns))  # and the old mtime put back (cp -p, rsync -t)
    new_truth = hashlib.sha256(data.read_bytes()).hexdigest()
    assert new_truth != truth and token_cache.file_sha256(data) == new_truth and len(reads) == 4  # ctime moved
    assert token_cache.file_sha256(data) == new_truth and len(reads) == 4
    monkeypatch.setattr(cache_keys, "RACY_S", 3600.0)  # every file is now "just changed": hashed again
    assert token_cache.file_sha256(data) == new_truth and len(reads) == 5
    memo_dir = token_cache.data_cache_dir() / "file-sha256"
    assert [json.loads(p.read_text())["path"] for p in memo_dir.iterdir()] == [str(data.resolve())]
