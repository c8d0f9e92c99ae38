"""Several train sources mixed by weight and several eval sources: seeded counts, a mix that is the same for the
same seed (so a resumed run trains on the same mix), config errors for what cannot mix, and a pretrain run whose
metrics.json reports each source's part of the mix, the tokens each trained and each eval source's loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tiny
from tuneforge.config.checks import check_config
from tuneforge.data.mixing import mix_counts, mix_sources
from tuneforge.errors import ConfigError
from tuneforge.stages import STAGES
from tuneforge.train.guards import run_guards


class Part(list):
    def lengths(self):
        return np.array([len(x) for x in self])


def test_the_mix_holds_each_source_by_weight_and_is_fixed_by_the_seed():
    assert mix_counts([100, 40], [0.3, 0.7]) == [42, 98]  # 30% / 70% of the 140 sequences
    assert mix_counts([10, 10, 10], [1, 1, 1]) == [10, 10, 10]
    assert mix_counts([1000, 3], [1, 0.0001]) == [1003, 1]  # every source is in the mix
    a, b = Part([[i] * 3 for i in range(100)]), Part([[1000 + i] for i in range(40)])
    mix = mix_sources([a, b], [0.3, 0.7], seed=5)
    assert np.bincount(mix.source).tolist() == [42, 98]
    picked_b = mix.example[mix.source == 1]
    assert sorted(np.bincount(picked_b, minlength=40).tolist()) == [2] * 22 + [3] * 18  # b repeated 2.45x
    assert len(set(mix.example[mix.source == 0].tolist())) == 42  # a subsampled, no repeats
    again = mix_sources([a, b], [0.3, 0.7], seed=5)
    assert [again[i] for i in range(len(again))] == [mix[i] for i in range(len(mix))]
    other = mix_sources([a, b], [0.3, 0.7], seed=6)
    assert np.bincount(other.source).tolist() == [42, 98] and other.example.tolist() != mix.example.tolist()
    assert mix.lengths().tolist() == [len(mix[i]) for i in range(len(mix))]


def test_lists_of_sources_are_for_the_lm_stages(make_config, tmp_path):
    cfg = make_config(data__train=["a.jsonl", {"path": "b.jsonl", "weight": 0.5}])
    assert [(s.path, s.weight) for s in cfg.data.train] == [("a.jsonl", 1.0), ("b.jsonl", 0.5)]
    with pytest.raises(ConfigError, match="data.train"):
        check_config(make_config(stage="classify", data__train=["a.jsonl"]))
    with pytest.raises(ConfigError, match="data.eval_split"):
        check_config(make_config(data__train=["a.jsonl"], data__eval=None, data__eval_split=0.1))
    files = [tiny.write_jsonl(tmp_path / n, [{"text": n}]) for n in ("a.jsonl", "b.jsonl")]
    guard = run_guards(make_config(data__train=[{"path": str(files[0])}, {"path": str(files[1])}]))
    reweighted = run_guards(make_config(data__train=[{"path": str(files[0]), "weight": 2}, {"path": str(files[1])}]))
    assert guard["data"]["sha256"] != reweighted["data"]["sha256"]  # a resume with other weights is refused
    assert run_guards(make_config(data__train=str(files[0])))["data"]["path"] == str(files[0])


def test_a_pretrain_mix_reports_each_sources_tokens_and_eval_loss(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNEFORGE_DATA_CACHE", raising=False)  # the cache under this home
    sky = tiny.write_jsonl(tmp_path / "sky.jsonl", [{"text": "the sky is blue . " * (1 + i % 4)} for i in range(30)])
    sun = tiny.write_jsonl(tmp_path / "sun.jsonl", [{"text": "the sun is yellow . " * 3} for _ in range(10)])
    mix = [{"path": str(sky), "weight": 0.25}, {"path": str(sun), "weight": 0.75}]
    cfg = make_config(stage="pretrain", data__train=mix, data__eval=[str(sky), str(sun)], training__max_steps=4,
                      training__batch_size=4, training__max_length=32, eval__generate_samples=0, eval__before=False)
    out = STAGES["pretrain"](cfg)
    m = json.loads((out / "metrics.json").read_text())
    sources = m["data"]["train"]["sources"]
    sizes = [s["examples"] for s in sources]  # sequences after splitting documents at max_length
    assert [s["in_mix"] for s in sources] == mix_counts(sizes, [0.25, 0.75]) and sizes[0] > sizes[1]
    assert sum(s["tokens_trained"] for s in sources) == m["train"]["tokens"]  # 4 steps x 4 sequences, by source
    assert m["data"]["train"]["examples"] == sum(sizes)
    assert m["data"]["train"]["tokens"] == sum(s["tokens_in_mix"] for s in sources)
    assert {"loss", "loss/sky.jsonl", "loss/sun.jsonl"} <= set(m["eval_after"])
    assert m["eval_after"]["loss/sky.jsonl"] != m["eval_after"]["loss/sun.jsonl"]
    assert set(m["data"]["eval"]["sources"]) == {"sky.jsonl", "sun.jsonl"}
    assert f"{sources[1]['in_mix']} sequences ({100 * sources[1]['share']:.1f}%)" in (out / "report.md").read_text()
