"""bench/bench_data_access.py end to end on the tiny model (a small generated corpus): the cached and in-memory
paths hold the same examples, both are timed on the same batches, and the JSON keeps every rep."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_data_access as bench  # noqa: E402


def test_both_paths_hold_the_same_examples_and_are_timed_on_the_same_batches(tmp_path, tiny_model_dir, monkeypatch,
                                                                               capsys):
    import make_pretrain_corpus

    corpus = tmp_path / "c.jsonl"
    make_pretrain_corpus.main(["--size-mb", "0.05", "--out", str(corpus), "--seed", "3"])
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "access.json"
    result = bench.main([str(corpus), "--records", "40", "--batches", "6", "--reps", "2", "--step", "1",
                         "--model", str(tiny_model_dir), "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["sequences"] == result["sequences"] > 4
    for path in ("in-memory", "cache"):
        assert len(saved["raw"]["fetch_s_per_batch"][path]) == 2 and saved["fetch_us_per_batch"][path]["median"] > 0
        assert len(saved["raw"]["step_cpu_s"][path]) == 1 and saved["step_cpu_s"][path]["median"] > 0
    assert saved["env"]["git"]["commit"] and "cache / in-memory" in capsys.readouterr().out
