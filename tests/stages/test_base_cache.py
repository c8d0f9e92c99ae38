"""The base model's scores remembered across runs (tuneforge/evaluation/base_cache.py): a second run on the same
model files, eval rows and settings reuses the first run's eval_before (no evaluation, the same numbers, the log
says whence); another eval file, precision, generation length, weight file or evaluation code is a miss;
eval.before_cache=false evaluates afresh; `tuneforge cache clear` removes the entries."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

import tiny
from tuneforge.data.cache_keys import data_cache_dir
from tuneforge.evaluation import base_cache
from tuneforge.stages.lm import run_lm


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """An empty data cache: other tests' runs of the same tiny config must not be hits here."""
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))


def _run(make_config, tmp_path, name: str, **overrides) -> tuple[dict, list[str]]:
    lines: list[str] = []
    out = run_lm(make_config(output_dir=str(tmp_path / name), training__max_steps=2, **overrides), lines.append)
    return json.loads((out / "eval_before.json").read_text()), lines


def _evaluated(lines: list[str]) -> bool:
    fresh = any("evaluating the base model" in line for line in lines)
    reused = any("from an earlier run's evaluation" in line for line in lines)
    assert fresh != reused, lines
    return fresh


def test_a_second_run_reuses_the_first_runs_base_scores(make_config, tmp_path):
    first, lines = _run(make_config, tmp_path, "a")
    assert _evaluated(lines) and "cached" not in first
    assert first["metrics"]["loss"] > 0 and len(first["details"]["generations"]) == 3
    second, lines = _run(make_config, tmp_path, "b", training__learning_rate=1e-2, method__r=4)
    assert not _evaluated(lines)  # the rate and the method do not change the base
    assert second["metrics"] == first["metrics"] and second["details"] == first["details"]
    assert any(str(tmp_path / "a") in line for line in lines)
    (entry,) = (data_cache_dir() / base_cache.DIR).glob("*.json")
    assert second["cached"] == entry.stem


def test_what_changes_the_scores_is_a_miss(make_config, tmp_path, tiny_model_dir, monkeypatch):
    _run(make_config, tmp_path, "a")
    other_eval = tiny.write_jsonl(tmp_path / "other.jsonl", tiny.toy_sft_rows(14)[7:])  # other questions
    assert _evaluated(_run(make_config, tmp_path, "eval", data__eval=str(other_eval))[1])
    assert _evaluated(_run(make_config, tmp_path, "bf16", training__precision="bf16")[1])
    assert _evaluated(_run(make_config, tmp_path, "new", eval__max_new_tokens=5)[1])
    assert _evaluated(_run(make_config, tmp_path, "off", eval__before_cache=False)[1])

    changed = tmp_path / "model"  # the same model with one weight nudged
    shutil.copytree(tiny_model_dir, changed)
    (weights,) = changed.glob("*.safetensors")
    tensors = load_file(weights)
    name = next(n for n in tensors if n.endswith("q_proj.weight"))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    assert _evaluated(_run(make_config, tmp_path, "weights", model=str(changed))[1])

    monkeypatch.setattr(base_cache, "code_digest", lambda: "another version of the evaluation code")
    assert _evaluated(_run(make_config, tmp_path, "code")[1])
    monkeypatch.undo()
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    assert not _evaluated(_run(make_config, tmp_path, "again")[1])


def test_cache_clear_removes_the_entries(make_config, tmp_path):
    from tuneforge.data.cache_admin import clear

    _run(make_config, tmp_path, "a")
    folder = data_cache_dir() / base_cache.DIR
    assert len(list(folder.glob("*.json"))) == 1
    clear(data_cache_dir(), older_than_days=1.0)
    assert len(list(folder.glob("*.json"))) == 1  # written just now: not old enough
    clear(data_cache_dir())
    assert not list(folder.glob("*.json"))
    assert _evaluated(_run(make_config, tmp_path, "b")[1])


def test_the_heap_the_base_evaluation_freed_goes_back_before_training(make_config, tmp_path, monkeypatch):
    """On the CPU the evaluation's freed heap is handed back (malloc_trim) before training allocates on top of it
    (the quickstart: training's peak RSS 2,141 -> 1,941 MB, no higher than the evaluation's own); a run whose base
    scores came from the cache, or that evaluates nothing, has nothing to hand back."""
    import tuneforge.stages.lm as lm
    from tuneforge.train import heap

    events: list[str] = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: events.append("release") or True)
    train = lm.train
    monkeypatch.setattr(lm, "train", lambda *a, **k: (events.append("train"), train(*a, **k))[1])
    _run(make_config, tmp_path, "a")
    assert events[:2] == ["release", "train"]
    events.clear()
    assert not _evaluated(_run(make_config, tmp_path, "hit")[1])
    assert events[:1] == ["train"]
    events.clear()
    run_lm(make_config(output_dir=str(tmp_path / "b"), training__max_steps=2, eval__before=False), lambda _m: None)
    assert events[:1] == ["train"]
