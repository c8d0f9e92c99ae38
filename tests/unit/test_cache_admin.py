"""Token-cache housekeeping (data.cache_admin, `tuneforge data cache`): listing, clearing by age, LRU eviction
under a size cap, and a cache whose lock is held (being built, or in use) is never removed."""

from __future__ import annotations

import fcntl
import json
import os
import time

import pytest

from tuneforge.data import cache_admin
from tuneforge.errors import ConfigError

DAY = 86400.0


def fake_cache(root, key: str, size: int, last_used: float, source: str = "data.jsonl", tokens: int = 10):
    """A complete cache folder as data.token_cache leaves it: meta.json, token files, its last-use stamp."""
    path = root / key
    path.mkdir(parents=True)
    (path / "tokens.npy").write_bytes(b"\0" * size)
    meta = {"stats": {"path": source, "corpus_tokens": tokens}, "created": last_used - DAY}
    (path / "meta.json").write_text(json.dumps(meta))
    (path / cache_admin.STAMP).touch()
    os.utime(path / cache_admin.STAMP, (last_used, last_used))
    return path


@pytest.fixture
def caches(tmp_path):
    now = time.time()
    for key, days in (("aaa", 10), ("bbb", 40), ("ccc", 1)):
        fake_cache(tmp_path, key, 1000, now - days * DAY, source=f"/data/{key}.jsonl")
    (tmp_path / ".aaa.lock").touch()  # lock files beside the caches are not caches
    return tmp_path


def test_list_shows_size_source_age_and_last_use_oldest_first(caches):
    entries = cache_admin.list_caches(caches)
    assert [e.key for e in entries] == ["bbb", "aaa", "ccc"]
    bbb = entries[0]
    assert bbb.size == 1000 + len((caches / "bbb" / "meta.json").read_bytes())
    assert bbb.source == "/data/bbb.jsonl" and bbb.tokens == 10 and not bbb.in_use
    assert bbb.created == pytest.approx(bbb.last_used - DAY)
    text = cache_admin.table(entries)
    assert "/data/bbb.jsonl" in text and "40.0 d ago" in text and "41.0 d" in text


def test_clear_older_than_removes_only_caches_unused_that_long(caches):
    removed, skipped = cache_admin.clear(caches, older_than_days=5)
    assert sorted(e.key for e in removed) == ["aaa", "bbb"] and skipped == []
    assert [p.name for p in caches.iterdir() if not p.name.startswith(".")] == ["ccc"]
    removed, _ = cache_admin.clear(caches)
    assert [e.key for e in removed] == ["ccc"] and cache_admin.list_caches(caches) == []


def test_clear_removes_a_dead_builds_temporary_folder_but_not_a_live_one(caches):
    (caches / ".ddd.x1y2").mkdir()  # a build that was killed: its key's lock is free
    (caches / ".eee.z3").mkdir()  # a build in progress: its key's lock is held
    with open(caches / ".eee.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache_admin.clear(caches, older_than_days=1000)
    assert not (caches / ".ddd.x1y2").exists() and (caches / ".eee.z3").is_dir()


def test_eviction_removes_least_recently_used_first_down_to_the_cap(caches):
    logs: list[str] = []
    total = sum(e.size for e in cache_admin.list_caches(caches))
    removed = cache_admin.evict(caches, total - 1, log=logs.append)  # one cache must go: the oldest
    assert [e.key for e in removed] == ["bbb"]
    assert "evicted" in logs[0] and "/data/bbb.jsonl" in logs[0]
    removed = cache_admin.evict(caches, 0, keep=caches / "ccc", log=logs.append)  # never the one just built
    assert [e.key for e in removed] == ["aaa"] and (caches / "ccc" / "meta.json").is_file()
    assert "above" in logs[-1]
    assert cache_admin.evict(caches, None) == []  # no cap: nothing happens


def test_a_locked_or_in_use_cache_is_never_evicted_or_cleared(caches):
    with open(caches / ".bbb.lock", "a") as lock:  # bbb is being built / opened by another process
        fcntl.flock(lock, fcntl.LOCK_EX)
        in_use = cache_admin.hold(caches / "aaa")  # aaa is being read (a run's reader holds this)
        try:
            assert {e.key for e in cache_admin.list_caches(caches) if e.in_use} == {"aaa", "bbb"}
            removed = cache_admin.evict(caches, 0, log=lambda _: None)
            assert [e.key for e in removed] == ["ccc"]
            removed, skipped = cache_admin.clear(caches)
            assert removed == [] and sorted(e.key for e in skipped) == ["aaa", "bbb"]
        finally:
            in_use.close()
    assert (caches / "aaa" / cache_admin.STAMP).stat().st_mtime > time.time() - 60  # hold stamped its use
    assert [e.key for e in cache_admin.evict(caches, 0, log=lambda _: None)] == ["bbb", "aaa"]  # released, aaa newest


def test_cap_from_the_environment(monkeypatch):
    monkeypatch.delenv(cache_admin.MAX_GB_ENV, raising=False)
    assert cache_admin.max_bytes_from_env() is None
    monkeypatch.setenv(cache_admin.MAX_GB_ENV, "0.5")
    assert cache_admin.max_bytes_from_env() == 2**29
    monkeypatch.setenv(cache_admin.MAX_GB_ENV, "lots")
    with pytest.raises(ConfigError, match="TUNEFORGE_DATA_CACHE_MAX_GB='lots'"):
        cache_admin.max_bytes_from_env()


def test_cli_lists_and_clears(run_cli, caches, monkeypatch, capsys):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(caches))
    assert run_cli(["data", "cache"]) == 0
    out = capsys.readouterr().out
    assert out.index("/data/bbb.jsonl") < out.index("/data/aaa.jsonl") < out.index("/data/ccc.jsonl")
    assert "3 cache(s)" in out
    assert run_cli(["data", "cache", "--older-than", "5"]) == 2
    assert "--older-than DAYS goes with --clear" in capsys.readouterr().err
    assert run_cli(["data", "cache", "--clear", "--older-than", "5"]) == 0
    assert "removed 2 cache(s)" in capsys.readouterr().out
    assert run_cli(["data", "cache", "--clear"]) == 0 and run_cli(["data", "cache"]) == 0
    assert "no data caches" in capsys.readouterr().out


def test_a_build_evicts_lru_caches_above_the_cap_but_not_one_a_live_reader_holds(tmp_path, tiny_model_dir,
                                                                                  tiny_tokenizer, monkeypatch):
    import gc

    import tiny
    from tuneforge.config.schema import Config
    from tuneforge.data.token_cache import load_cached_examples

    root = tmp_path / "caches"
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(root))
    files = [tiny.write_jsonl(tmp_path / f"t{i}.jsonl", tiny.toy_sft_rows(10, seed=i)) for i in range(3)]

    def load(path, log=lambda _: None):
        cfg = Config.model_validate({"model": str(tiny_model_dir), "stage": "sft", "data": {"train": str(path)},
                                     "training": {"max_length": 48, "progress": False}, "output_dir": "unused"})
        return load_cached_examples(cfg, tiny_tokenizer, path, log)[0]

    live = load(files[0])  # a run still reading t0's cache
    done = load(files[1])
    del done  # that run ended: its in-use lock is gone
    gc.collect()
    monkeypatch.setenv(cache_admin.MAX_GB_ENV, "0")
    logs: list[str] = []
    third = load(files[2], logs.append)
    assert sorted(e.source for e in cache_admin.list_caches(root)) == [str(files[0]), str(files[2])]
    assert any(line.startswith("data cache: evicted") and "t1.jsonl" in line for line in logs)
    assert len(live) > 0 and len(third) > 0 and live[0].input_ids  # both still read from their maps
    stamp = next(e for e in cache_admin.list_caches(root) if e.source == str(files[0])).path / cache_admin.STAMP
    os.utime(stamp, (1.0, 1.0))
    logs.clear()
    load(files[0], logs.append)  # a reuse stamps the last use
    assert any(line.startswith("data cache: reused") for line in logs) and stamp.stat().st_mtime > 1.0


def test_clear_removes_the_remembered_file_digests(caches, tmp_path_factory, monkeypatch):
    """`tuneforge data cache --clear` left file-sha256/ behind; a full clear removes it, --older-than only the
    digests of files that are gone or changed."""
    from tuneforge.data import cache_keys

    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(caches))
    monkeypatch.setattr(cache_keys, "RACY_S", 0)  # remember digests of files written just now
    data = tmp_path_factory.mktemp("data")
    kept, changed, gone = (data / n for n in ("kept.jsonl", "changed.jsonl", "gone.jsonl"))
    for f in (kept, changed, gone):
        f.write_text('{"text": "x"}\n')
        past = time.time() - 60
        os.utime(f, (past, past))
    for f in (kept, changed, gone):
        cache_keys.file_sha256(f)
    memo = caches / cache_keys.MEMO_DIR
    assert len(list(memo.glob("*.json"))) == 3
    changed.write_text('{"text": "y"}\n')
    gone.unlink()
    cache_admin.clear(caches, older_than_days=5)
    left = [json.loads(p.read_text())["path"] for p in memo.glob("*.json")]
    assert left == [str(kept.resolve())]
    cache_admin.clear(caches)
    assert list(memo.glob("*.json")) == []
