"""The figures of docs/benchmarks.md's "Session 14" section (short samples through plain ops, LoRA dropout 0) are
the JSONs' (bench/results/attention_kernels.json, profile_step/run6_zen4_short_attn.json, short_attention.json),
not typed, and the start-up paragraph's are bench/results/startup_s14.json's."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def _section() -> str:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    return text.split("### Session 14: short samples through plain ops", 1)[1].split("### Session 13:", 1)[0]


def test_the_kernel_and_step_tables_are_the_jsons():
    docs = _section()
    kernels = json.loads((RESULTS / "attention_kernels.json").read_text())
    for row in kernels["rows"]:
        cpu = row["cpu_seconds"]
        assert (f"| {', '.join(map(str, row['lengths']))} | {row['median']['sdpa']:.3f} ({min(cpu['sdpa']):.3f}-"
                f"{max(cpu['sdpa']):.3f}) | {row['median']['short']:.3f} ({min(cpu['short']):.3f}-"
                f"{max(cpu['short']):.3f}) | {row['speedup']:.2f}x |") in docs
    steps = json.loads((RESULTS / "profile_step" / "run6_zen4_short_attn.json").read_text())
    for batch, levers in steps["runs"].items():
        base = levers["loop-sdpa"]["median_cpu_s"]
        for name, r in levers.items():
            assert (f"| {batch} ({r['tokens_per_step']:.0f}) | {name} | {r['median_cpu_s']:.3f} ({r['min_cpu_s']:.3f}-"
                    f"{r['max_cpu_s']:.3f}) | {r['median_wall_s']:.2f} | {base / r['median_cpu_s']:.2f}x |") in docs
    four, eight = steps["runs"]["4"], steps["runs"]["8"]
    kernel = [round(b["loop-sdpa"]["median_cpu_s"] / b["loop"]["median_cpu_s"], 2) for b in (four, eight)]
    masks = [round(b["loop"]["median_cpu_s"] / b["loop+no-dropout"]["median_cpu_s"], 2) for b in (four, eight)]
    assert kernel == [1.14, 1.14] and masks == [1.13, 1.11]  # the sentence under the table


def test_the_whole_process_figures_are_the_jsons():
    docs = _section()
    rec = json.loads((RESULTS / "short_attention.json").read_text())
    r, recipes = rec["summary"]["ratios"], rec["summary"]["recipes"]
    for line in rec["table"].splitlines():
        if line.startswith("|"):
            assert line in docs, line
    assert f"{r['process_speedup_vs_tuneforge-sdpa-samples']:.3f}x the process speed" in docs
    assert f"**{r['process_speedup_vs_trl-cpu']:.2f}x `trl-cpu`**" in docs
    assert f"**{100 * r['mfu_tuneforge']:.1f}% MFU**" in docs
    dropout0 = recipes["trl-cpu"]["process_s"]["median"] / recipes["tuneforge-dropout0"]["process_s"]["median"]
    assert f"{dropout0:.2f}x `trl-cpu`" in docs
    assert rec["env"]["git"]["dirty"] is False


def test_the_startup_paragraph_is_the_json():
    docs = " ".join((ROOT / "docs" / "benchmarks.md").read_text().split())  # line breaks as spaces
    runs = json.loads((RESULTS / "startup_s14.json").read_text())["runs"]
    before = ("import", "config", "begin", "data", "open_output", "model_load", "eval_before", "method")
    # the first step's own set-up: its phase less one step of compute (the second step)
    starts = sorted(sum(r[k]["wall"] for k in before) + r["first_step"]["wall"] - r["steps"]["wall"] for r in runs)
    ends = sorted(r["last step -> exit"]["wall"] for r in runs)
    assert f"**{starts[1]:.2f} s ({starts[0]:.2f}-{starts[2]:.2f}) from the command to the first step's start**" in docs
    assert f"**{ends[1]:.2f} s ({ends[0]:.2f}-{ends[2]:.2f}) from the last step to the exit**" in docs


def test_the_session_15_rerun_is_the_json():
    docs = " ".join((ROOT / "docs" / "benchmarks.md").read_text().split())
    rec = json.loads((RESULTS / "side_by_side_s15.json").read_text())
    med = {k: v["process_s"] for k, v in rec["summary"]["recipes"].items()}
    r = rec["summary"]["ratios"]
    assert rec["env"]["git"]["commit"].startswith("1cae6a1") and rec["env"]["git"]["dirty"] is False
    assert f"`trl-cpu` {med['trl-cpu']['median']:.1f} s against 101.7" in docs
    assert f"bf16 peak {rec['peak_flops']['bf16'] / 1e9:.1f} GFLOP/s" in docs
    tf = med["tuneforge"]
    assert f"tuneforge {tf['median']:.1f} s ({tf['min']:.1f}-{tf['max']:.1f}), " \
           f"**{r['process_speedup_vs_trl-cpu']:.2f}x `trl-cpu`** at {100 * r['mfu_tuneforge']:.1f}% MFU" in docs
    d0 = med["tuneforge-dropout0"]["median"]
    assert f"{d0:.1f} s, {med['trl-cpu']['median'] / d0:.2f}x" in docs
    assert f"Peak RSS {r['peak_rss_tuneforge_over_trl-cpu']:.2f}x" in docs
