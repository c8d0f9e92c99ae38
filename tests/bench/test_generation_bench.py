"""bench/generation.py on the tiny model, so the script cannot rot: each (setting, precision) runs in its own
process on the quickstart's eval prompts, fp32 generations agree between session 18's batching and today's, and
the JSON holds the cases, the ratios and the environment. The figures themselves (the embedded default) are
checked against docs/benchmarks.md by test_generation_figures below."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import generation  # noqa: E402


def test_every_case_runs_apart_and_fp32_texts_agree(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "generation.json"
    report = generation.main(["--model", str(tiny_model_dir), "--reps", "1", "--rows", "6", "--new-tokens", "4",
                              "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["cases"]) == {"before/fp32", "now/fp32", "before/bf16", "now/bf16"} == set(report["cases"])
    assert saved["same_texts"]["fp32"] == 6 and len(saved["prompt_tokens"]) == 6
    for p in ("fp32", "bf16"):
        assert saved["speedup"][p] == saved["cases"][f"before/{p}"]["median_s"] / saved["cases"][f"now/{p}"]["median_s"]
    assert saved["environment"]["cpu"] and "faster than before" in capsys.readouterr().out


def test_the_before_setting_batches_as_session_18_did():
    import tuneforge.evaluation.generate as gen

    saved = gen._groups, gen.bf16_weights
    try:
        generation._before(gen)
        assert gen._groups(None, None, [[1]] * 19, None, 4) == [list(range(0, 8)), list(range(8, 16)), [16, 17, 18]]
        with gen.bf16_weights(None, "bf16") as held:
            assert held == 0
    finally:
        gen._groups, gen.bf16_weights = saved


def test_generation_figures():
    """docs/benchmarks.md's generation section quotes bench/results/generation.json."""
    saved = json.loads((ROOT / "bench/results/generation.json").read_text())
    doc = (ROOT / "docs/benchmarks.md").read_text()
    section = doc[doc.index("## Evaluation's generation"):]
    section = section[: section.index("\n## ", 3)] if "\n## " in section[3:] else section
    assert saved["command"] in section and saved["same_texts"]["fp32"] == saved["rows"] == 40
    for key, case in saved["cases"].items():
        assert f"{case['median_s']:.1f}" in section, key
    for p, ratio in saved["speedup"].items():
        assert f"{ratio:.2f}x" in section, p
    assert re.search(r"\d+ of 40", section)


def _startup(name: str) -> tuple[list[float], list[float]]:
    runs = json.loads((ROOT / "bench/results" / name).read_text())["runs"]
    before = ("import", "config", "begin", "data", "open_output", "model_load", "eval_before", "method")
    starts = sorted(sum(r[k]["wall"] for k in before) + r["first_step"]["wall"] - r["steps"]["wall"] for r in runs)
    return starts, sorted(r["last step -> exit"]["wall"] for r in runs)


def test_the_session_19_startup_table_is_the_json():
    doc = (ROOT / "docs/benchmarks.md").read_text()
    section = doc[doc.index("**Session 19: the quickstart's own evaluation"):doc.index("## Evaluation's generation")]
    (s0, e0), (s1, e1) = _startup("startup_s19_before.json"), _startup("startup_s19.json")
    cell = [f"**{e[1]:.2f} ({e[0]:.2f}-{e[2]:.2f})**" for e in (e0, e1)]
    assert f"| **last step -> exit** | {cell[0]} | {cell[1]} |" in section
    assert f"| command -> first step's start | {s0[1]:.2f} ({s0[0]:.2f}-{s0[2]:.2f}) | {s1[1]:.2f}" in section
    assert f"{e0[1] / e1[1]:.1f}x less" in section and e0[1] / e1[1] > 2


def test_the_base_cache_startup_paragraph_is_the_json():
    doc = " ".join((ROOT / "docs/benchmarks.md").read_text().split())
    (s0, _), (s1, _) = _startup("startup_s19_nocache.json"), _startup("startup_s19_cached.json")
    assert f"**command -> first step's start {s0[1]:.2f} s ({s0[0]:.2f}-{s0[2]:.2f}) afresh, {s1[1]:.2f} s " \
           f"({s1[0]:.2f}-{s1[2]:.2f}) with the base's scores remembered**" in doc
    cached = json.loads((ROOT / "bench/results/startup_s19_cached.json").read_text())["runs"]
    assert all(r["eval_before"]["wall"] < 0.5 for r in cached) and s1[1] < s0[1] / 2
