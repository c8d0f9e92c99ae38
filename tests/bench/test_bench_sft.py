"""bench/bench_sft.py cannot rot: its --quick mode runs in CI on the tiny model (2 recipes, 1 repetition, 2 steps,
8 rows, each recipe in its own process) and the JSON must hold the versions, commit, CPU flags, every recipe's raw
figures, and a summary that is computed from those raw figures. The parent's order and summary are also checked
in-process on made-up figures (interleaved repetitions, median and min-max)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_sft  # noqa: E402
from sftbench.data import load_rows, split_rows  # noqa: E402
from sftbench.report import summarise  # noqa: E402


def test_rows_are_the_vendored_human_written_set():
    rows = load_rows()  # checks the file's sha256 against bench/data/README.md's
    train, evals = split_rows(rows)
    assert (len(rows), len(train), len(evals)) == (175, 140, 35)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert rows[0]["prompt"].startswith("Is there anything I can eat for a breakfast")


def _fake_rep(recipe: str, rep: int, wall: float) -> dict:
    return {"recipe": recipe, "rep": rep, "process_wall_s": wall, "eval_s": 1.0, "train_s": wall / 2,
            "cpu_s": wall, "real_tokens": 1000, "fed_tokens": 2000, "non_embedding_params": 10**6,
            "peak_rss_mb": 100.0 * (1 + rep), "eval_loss_base": 2.0, "eval_loss": 1.5 if recipe == "seed-fp32" else 1.6,
            "eval_drop": 0.5 if recipe == "seed-fp32" else 0.4,
            "settings": {"matmul_dtype": "fp32" if recipe == "seed-fp32" else "bf16"}}


def test_parent_interleaves_repetitions_and_summarises_them(tiny_model_dir, tmp_path, monkeypatch):
    order: list[tuple[str, int]] = []
    walls = {"seed-fp32": [30.0, 50.0, 40.0], "tuneforge": [11.0, 9.0, 13.0]}

    out = tmp_path / "sft.json"
    partial = tmp_path / "sft.partial.json"

    def fake_run_rep(args, recipe, rep):
        if order:  # every finished repetition is on disk before the next starts (a stopped run keeps them)
            saved = json.loads(partial.read_text())["raw"]
            assert sum(len(v) for v in saved.values()) == len(order)
        order.append((recipe, rep))
        return _fake_rep(recipe, rep, walls[recipe][rep])

    monkeypatch.setattr(bench_sft, "run_rep", fake_run_rep)
    rc = bench_sft.main(["--model", str(tiny_model_dir), "--recipes", "seed-fp32,tuneforge", "--reps", "3",
                         "--threads", "1", "--peak-seconds", "0.02", "--out", str(out)])
    assert rc == 0
    assert not partial.exists()  # replaced by the whole record
    assert order == [("seed-fp32", 0), ("tuneforge", 0), ("seed-fp32", 1), ("tuneforge", 1),
                     ("seed-fp32", 2), ("tuneforge", 2)]
    summary = json.loads(out.read_text())["summary"]
    seed, tf = summary["recipes"]["seed-fp32"], summary["recipes"]["tuneforge"]
    assert seed["process_s"] == {"median": 39.0, "min": 29.0, "max": 49.0, "n": 3}  # wall minus the eval's 1 s
    assert tf["process_s"] == {"median": 10.0, "min": 8.0, "max": 12.0, "n": 3}
    assert summary["ratios"]["process_speedup_vs_seed-fp32"] == pytest.approx(3.9)
    assert summary["goals"]["process_speedup_vs_seed-fp32"]["pass"] is False
    # drop 0.4 vs 0.5: 0.8 < 0.98 fails; the untrained base (drop 0) fails it too
    assert summary["goals"]["eval_drop_tuneforge_over_seed-fp32"] == {"value": pytest.approx(0.8),
                                                                       "target": ">= 0.98", "pass": False}
    assert summary["checks"]["untrained_base_fails_quality_goal"] is True


def test_quick_mode_runs_and_records_everything(tiny_model_dir, tmp_path):
    out = tmp_path / "sft.json"
    env = {**os.environ, "TUNEFORGE_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "bench/bench_sft.py", "--quick", "--model", str(tiny_model_dir),
                           "--threads", "1", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rec = json.loads(out.read_text())
    env_rec = rec["env"]
    for pkg in ("torch", "transformers", "peft", "trl", "tuneforge"):
        assert env_rec["versions"][pkg], pkg
    assert len(env_rec["git"]["commit"]) == 40
    assert env_rec["cpu"]["model"] and env_rec["cpu"]["flags"]
    assert {"avx512_bf16", "amx_bf16"} <= env_rec["cpu"]["flags_of_interest"].keys()
    assert rec["args"]["threads"] == 1 and rec["peak_flops"]["fp32"] > 0 and rec["peak_flops"]["bf16"] > 0
    assert set(rec["raw"]) == {"seed-fp32", "tuneforge"}
    for name, reps in rec["raw"].items():
        assert len(reps) == 1, name
        r = reps[0]
        assert r["steps"] == 2 and r["threads"] == 1, name
        assert r["real_tokens"] > 0 and r["train_s"] > 0 and r["peak_rss_mb"] > 0 and r["process_wall_s"] > 0
        assert r["eval_loss_base"] > r["eval_loss"], name  # two steps at lr 1e-3 move the tiny model
        assert "?" not in r["settings"].values(), name
    assert rec["raw"]["seed-fp32"][0]["fed_tokens"] == 8 * 512  # padded to max_length: 2 steps x 4 rows
    tf = rec["raw"]["tuneforge"][0]  # counted at the decoder, which the chunked loss calls (no padding: all real)
    assert tf["real_tokens"] == tf["fed_tokens"] > 0 and tf["forwards"] >= 2
    assert rec["raw"]["tuneforge"][0]["settings"]["packing"] is True
    # the base is the same model for both: one shared eval
    assert rec["raw"]["seed-fp32"][0]["eval_loss_base"] == pytest.approx(rec["raw"]["tuneforge"][0]["eval_loss_base"])
    # the summary (and the printed table) is computed from the raw figures
    assert rec["summary"] == json.loads(json.dumps(summarise(rec["raw"], rec["peak_flops"])))
    r = rec["raw"]["tuneforge"][0]
    assert rec["summary"]["recipes"]["tuneforge"]["process_s"]["median"] == pytest.approx(
        r["process_wall_s"] - r["eval_s"])
    assert "| tuneforge | bf16 |" in proc.stdout or "| tuneforge | fp32 |" in proc.stdout
    assert rec["table"] in proc.stdout


LEVERS = [("tuneforge-trim", "trim_memory", False, True), ("tuneforge-fp32-frozen", "frozen_bf16", True, False),
          ("tuneforge-plain-loss", "chunked_loss", True, False), ("tuneforge-mmap1m", "mmap_threshold_kb", None, 1024),
          ("tuneforge-cache1024", "kernel_cache_entries", 64, None),
          ("tuneforge-masked-attn", "per_sample_attention", True, False),
          ("tuneforge-sdpa-samples", "short_sample_tokens", 256, 0),
          ("tuneforge-bf16-stream", "bf16_stream", False, True),
          ("tuneforge-dropout0", "lora", {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
           {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})]


@pytest.mark.parametrize("lever, key, default, value", LEVERS)
def test_a_lever_recipe_differs_from_tuneforge_in_that_key_alone(tiny_model_dir, tmp_path, monkeypatch, lever, key,
                                                                 default, value):
    """`--recipes tuneforge,<lever>` measures one training key against tuneforge's default; `make bench`
    (the default recipes) still runs the five peers only."""
    from sftbench.recipes import PEERS, RECIPES
    from transformers import AutoTokenizer

    from tuneforge.train import attention

    monkeypatch.setattr(attention, "SHORT_SAMPLE_TOKENS", attention.SHORT_SAMPLE_TOKENS)  # a recipe sets it
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    assert bench_sft.parse_args([]).recipes.split(",") == list(PEERS) and lever not in PEERS
    common = bench_sft.common(bench_sft.parse_args(["--model", str(tiny_model_dir), "--max-steps", "1"]))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train, _ = split_rows(load_rows(), 8, 4)
    settings = {}
    for name in ("tuneforge", lever):
        (tmp_path / name).mkdir()
        setup = RECIPES[name](train, tok, str(tmp_path / name), common)
        setup.fit()
        assert setup.steps() == 1
        settings[name] = setup.settings
    assert settings["tuneforge"].pop(key) == default and settings[lever].pop(key) == value
    assert settings["tuneforge"] == settings[lever]


def test_the_peers_with_bounded_kernel_caches_or_a_bf16_base_differ_in_that_alone(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    """trl-cpu-cache64 is trl-cpu with the two capacities set before its first matmul (as tuneforge sets them);
    trl-cpu-bf16-model is trl-cpu with its base loaded in bf16."""
    from sftbench.recipes import RECIPES
    from transformers import AutoTokenizer

    from tuneforge.train.kernel_cache import CAPACITY_ENV

    for name in CAPACITY_ENV:  # set, then removed: pytest records the original state and restores it after
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    common = bench_sft.common(bench_sft.parse_args(["--model", str(tiny_model_dir), "--max-steps", "1"]))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train, _ = split_rows(load_rows(), 8, 4)
    settings = {}
    for name in ("trl-cpu", "trl-cpu-cache64", "trl-cpu-bf16-model"):
        (tmp_path / name).mkdir()
        setup = RECIPES[name](train, tok, str(tmp_path / name), common)
        setup.fit()
        assert setup.steps() == 1
        settings[name] = {k: v for k, v in setup.settings.items() if k != "output_dir"}
        if name == "trl-cpu-bf16-model":  # the base in bf16, the LoRA weights fp32 (peft's adapter autocast)
            dtypes = {(p.requires_grad, p.dtype) for p in setup.model.parameters()}
            assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    assert settings["trl-cpu-cache64"].pop("kernel_caches") == {name: "64" for name in CAPACITY_ENV}
    assert settings["trl-cpu"].pop("model_dtype") == settings["trl-cpu-cache64"].pop("model_dtype") == "float32"
    assert settings["trl-cpu-bf16-model"].pop("model_dtype") == "bfloat16"
    assert settings["trl-cpu"] == settings["trl-cpu-cache64"] == settings["trl-cpu-bf16-model"]


def test_the_frozen_bf16_figures_in_the_docs_are_the_jsons():
    """docs/benchmarks.md's frozen_bf16 table and ratios are bench/results/frozen_bf16.json's medians, not typed."""
    summary = json.loads((ROOT / "bench" / "results" / "frozen_bf16.json").read_text())["summary"]["recipes"]
    docs = (ROOT / "docs" / "benchmarks.md").read_text().split("### `training.frozen_bf16`", 1)[1]
    rss = {name: summary[name]["peak_rss_mb"]["median"] for name in ("seed-fp32", "tuneforge", "tuneforge-fp32-frozen")}
    for value in rss.values():
        assert f"{value:,.0f}" in docs
    assert f"Peak RSS {rss['tuneforge'] / rss['tuneforge-fp32-frozen']:.3f}x with the key on" in docs
    assert f"**{rss['tuneforge'] / rss['seed-fp32']:.3f}x**" in docs
    speed = summary["tuneforge-fp32-frozen"]["process_s"]["median"] / summary["tuneforge"]["process_s"]["median"]
    assert f"for {speed:.2f}x the process speed" in docs


def test_the_chunked_loss_figures_in_the_docs_are_the_jsons():
    """docs/benchmarks.md's chunked_loss / mmap_threshold_kb A/B and its ratios are bench/results/chunked_loss.json's
    medians (against frozen_bf16.json's seed-fp32 peak), not typed."""
    summary = json.loads((ROOT / "bench" / "results" / "chunked_loss.json").read_text())["summary"]["recipes"]
    seed = json.loads((ROOT / "bench" / "results" / "frozen_bf16.json").read_text())["summary"]["recipes"]
    docs = (ROOT / "docs" / "benchmarks.md").read_text().split("#### Side by side, whole process (session 12)", 1)[1]
    rss = {n: summary[n]["peak_rss_mb"]["median"] for n in ("tuneforge", "tuneforge-plain-loss", "tuneforge-mmap1m")}
    proc = {n: summary[n]["process_s"]["median"] for n in rss}
    for name in rss:
        assert f"| {proc[name]:.1f} (" in docs and f"| {rss[name]:,.0f} (" in docs, name
    assert f"peak RSS {rss['tuneforge'] / rss['tuneforge-plain-loss']:.3f}x the plain loss's, for " \
           f"{proc['tuneforge-plain-loss'] / proc['tuneforge']:.2f}x the process speed" in docs
    assert f"peak RSS {rss['tuneforge-mmap1m'] / rss['tuneforge']:.3f}x, for " \
           f"{proc['tuneforge'] / proc['tuneforge-mmap1m']:.2f}x the process speed" in docs
    base = seed["seed-fp32"]["peak_rss_mb"]["median"]
    assert f"**{rss['tuneforge'] / base:.3f}x**" in docs and f"**{rss['tuneforge-mmap1m'] / base:.3f}x**" in docs


def test_the_current_table_and_goals_in_the_docs_are_the_jsons():
    """The top of docs/benchmarks.md (session 13's run) is the script's own table for bench/results/sft_s13.json,
    and each goal's figure there is the JSON's summary, recomputed from its raw repetitions."""
    rec = json.loads((ROOT / "bench" / "results" / "sft_s13.json").read_text())
    assert rec["summary"] == json.loads(json.dumps(summarise(rec["raw"], rec["peak_flops"])))
    docs = (ROOT / "docs" / "benchmarks.md").read_text().split("#### Session 9's run", 1)[0]
    for line in rec["table"].splitlines():
        if line.startswith("|"):
            assert line in docs, line
    goals, ratios = rec["summary"]["goals"], rec["summary"]["ratios"]
    for key in ("process_speedup_vs_seed-fp32", "process_speedup_vs_seed-bf16", "process_speedup_vs_trl-cpu"):
        assert f"**{goals[key]['value']:.2f}x**" in docs, key
    assert f"**{100 * goals['mfu_tuneforge']['value']:.1f}%**" in docs
    assert f"**{goals['peak_rss_tuneforge_over_seed-fp32']['value']:.3f}**" in docs
    assert f"**{goals['eval_drop_tuneforge_over_seed-fp32']['value']:.2f}**" in docs
    bound = ratios["peak_rss_tuneforge_over_tuneforge-cache1024"]
    assert f"peak RSS {bound:.3f}x the libraries' default caches" in docs
    assert rec["env"]["git"]["dirty"] is False and rec["summary"]["checks"]["untrained_base_fails_quality_goal"]


def test_the_readmes_benchmark_sentence_is_the_jsons():
    r = json.loads((ROOT / "bench" / "results" / "sft_s13.json").read_text())["summary"]["ratios"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"{r['process_speedup_vs_seed-fp32']:.1f}x the Trainer + peft recipe in fp32, "
            f"{r['process_speedup_vs_seed-bf16']:.1f}x in bf16, "
            f"{r['process_speedup_vs_trl-default']:.1f}x TRL's defaults, "
            f"{r['process_speedup_vs_trl-cpu']:.2f}x TRL tuned for CPU") in readme
    assert f"in {r['peak_rss_tuneforge_over_seed-fp32']:.2f}x the fp32 recipe's peak RSS" in readme


def test_the_per_sample_attention_figures_in_the_docs_are_the_jsons():
    rec = json.loads((ROOT / "bench" / "results" / "per_sample_attention.json").read_text())
    s, r = rec["summary"], rec["summary"]["ratios"]
    docs = (ROOT / "docs" / "benchmarks.md").read_text().split("### Session 13: a Zen 4 under bf16", 1)[1]
    for line in rec["table"].splitlines():
        if line.startswith("|"):
            assert line in docs, line
    assert (f"{r['process_speedup_vs_tuneforge-masked-attn']:.3f}x the process speed "
            f"({r['train_speedup_vs_tuneforge-masked-attn']:.3f}x training)") in docs
    assert f"for {r['peak_rss_tuneforge_over_tuneforge-masked-attn']:.3f}x the peak RSS" in docs
    mfu = {n: f"{100 * s['recipes'][n]['mfu']['median']:.1f}%" for n in ("tuneforge", "tuneforge-masked-attn")}
    assert f"MFU {mfu['tuneforge']} vs\n{mfu['tuneforge-masked-attn']}" in docs
