"""bench/attention_kernels.py runs (so it cannot rot) and its error columns say what the docs say: the short-sample
path is as close to the fp32 reference as SDPA's bf16 kernel, and exact in fp32."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import attention_kernels  # noqa: E402


def test_the_kernel_bench_runs_and_the_short_path_is_as_accurate(tmp_path):
    out = tmp_path / "k.json"
    result = attention_kernels.main(["--lengths", "12,20", "--reps", "1", "--out", str(out)])
    row = result["rows"][0]
    assert json.loads(out.read_text())["rows"][0]["lengths"] == [12, 20]
    assert set(row["median"]) == {"sdpa", "short"} and all(v > 0 for v in row["median"].values())
    assert max(row["errors"]["short"]) < 2e-2 and max(row["errors"]["short"]) <= 3 * max(row["errors"]["sdpa"])
    exact = attention_kernels.main(["--lengths", "9,7", "--reps", "1", "--dtype", "fp32"])["rows"][0]["errors"]
    assert max(exact["short"]) < 1e-5
