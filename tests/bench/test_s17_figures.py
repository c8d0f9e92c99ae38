"""The figures of docs/benchmarks.md's "Session 17" section (an AMX Xeon: compile, training.bf16_stream, the side
by side of the defaults) are the JSONs' (bench/results/profile_step/run7_amx_compile_warm.json,
run8_amx_bf16_stream.json, bf16_stream_s17.json, side_by_side_s17_amx.json), not typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def _section() -> str:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    return text.split("### Session 17: an Intel Xeon with AMX", 1)[1].split("### Session 14:", 1)[0]


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


@pytest.mark.parametrize("name, base, other, label", [
    ("profile_step/run7_amx_compile_warm.json", "loop+no-dropout", "loop+compile", "loop + compile (dynamic shapes)"),
    ("profile_step/run8_amx_bf16_stream.json", "loop+no-dropout", "loop+bf16-stream", "loop + bf16 stream")])
def test_the_step_tables_are_the_jsons(name, base, other, label):
    docs = _section()
    for batch, levers in _json(name)["runs"].items():
        b, o = levers[base], levers[other]
        for r in (b, o):
            cells = f"{r['median_cpu_s']:.3f} ({r['min_cpu_s']:.3f}-{r['max_cpu_s']:.3f}) | {r['median_wall_s']:.2f}"
            assert cells in docs and f"{r['loss']:.5f}" in docs
        row = f"| {label} | {o['median_cpu_s']:.3f}" if "compile" in name else \
            f"| {batch} ({o['tokens_per_step']:.0f}) | {label} | {o['median_cpu_s']:.3f}"
        assert row in docs
        assert f"**{b['median_cpu_s'] / o['median_cpu_s']:.2f}x**" in docs
    if "compile" in name:
        first = _json(name)["runs"]["4"][other]["first_step"]["cpu_s"]
        assert f"**{first:.0f} CPU s** with inductor's cache warm" in docs


@pytest.mark.parametrize("name", ["bf16_stream_s17.json", "side_by_side_s17_amx.json"])
def test_the_whole_process_tables_are_the_jsons(name):
    docs, run = _section(), _json(name)
    for line in run["table"].splitlines():
        if line.startswith("|"):
            assert line in docs, line
    assert run["env"]["git"]["dirty"] is False and run["env"]["cpu"]["flags_of_interest"]["amx_bf16"] is True
    r = run["summary"]["ratios"]
    if name == "bf16_stream_s17.json":
        assert f"**`training.bf16_stream`: {1 / r['process_speedup_vs_tuneforge-bf16-stream']:.3f}x the process" in docs
        assert f"{r['process_speedup_vs_trl-cpu']:.2f}x `trl-cpu` on the benchmark's settings" in docs
        assert f"same lever, {r['process_speedup_vs_trl-cpu-bf16-model']:.2f}x" in docs
    else:
        assert f"**{r['process_speedup_vs_trl-cpu']:.2f}x `trl-cpu`**" in docs
        assert f"**{100 * r['mfu_tuneforge']:.1f}% MFU**" in docs


def test_the_profile_shares_are_the_profiles():
    """The profile table's shares are sums of run7_amx_profile.txt's self-CPU percentages; the last row the rest."""
    import re

    share = {}
    for line in (RESULTS / "profile_step" / "run7_amx_profile.txt").read_text().splitlines():
        m = re.match(r"\s*(aten::\S+)\s+([\d.]+)%", line)
        if m:
            share[m.group(1)] = float(m.group(2))
    groups = [("aten::mm", "aten::bmm"), ("aten::copy_",), ("aten::mul",),
              ("aten::masked_fill_", "aten::_softmax", "aten::_softmax_backward_data"),
              ("aten::_log_softmax", "aten::_log_softmax_backward_data"), ("aten::silu", "aten::silu_backward")]
    sums = [sum(share[op] for op in g) for g in groups]
    docs = _section()
    for value in sums:
        assert f"| {value:.1f}% |" in docs
    assert f"| {100 - sum(sums):.1f}% |" in docs
