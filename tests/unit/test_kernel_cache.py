"""training.kernel_cache_entries (tuneforge/train/kernel_cache.py): oneDNN keeps a compiled kernel per matmul shape
in two caches whose capacity is read from the environment at first use. Proven in fresh processes (pytest's own
process has long since made its caches): with a bound, bf16 matmuls over ever-new shapes (what packed rows of
varying length make) stop adding memory; through `python -m tuneforge train` the stage sets the bound before the
first matmul and says so, and a bound small enough to evict kernels within every step trains bit for bit the
same as the libraries' defaults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneforge.train import kernel_cache
from tuneforge.train.kernel_cache import CAPACITY_ENV, bound_kernel_caches

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
SRC = str(Path(kernel_cache.__file__).parents[2])


def test_the_bound_fills_what_the_environment_leaves_open(monkeypatch):
    for name in CAPACITY_ENV:  # set, then removed: pytest records the original state and restores it after
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    assert bound_kernel_caches(None) == {}  # null: the libraries' defaults, nothing set
    assert all(name not in os.environ for name in CAPACITY_ENV)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "500")  # the user's export wins over the key
    assert bound_kernel_caches(64) == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "500"}
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"


# bf16 autocast matmuls (forward and backward) over 150 row counts, as packed rows of varying length make them; the
# growth of malloc's live bytes (mallinfo2) across them, in MB
_GROWTH = r"""
import ctypes, sys
sys.path[:0] = [{src!r}]
from tuneforge.train.kernel_cache import bound_kernel_caches
bound_kernel_caches({entries})
import torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t)
                for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
def live():
    m = libc.mallinfo2()
    return (m.uordblks + m.hblkhd) / 2**20
torch.set_num_threads(1)
w = torch.randn(1536, 576, requires_grad=True)
def step(n):
    x = torch.randn(n, 576, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.linear(x, w)
    y.float().sum().backward()
step(300)
before = live()
for n in range(400, 550):
    step(n)
print(live() - before)
"""


def _growth(entries: int | None) -> float:
    out = subprocess.run([sys.executable, "-c", _GROWTH.format(src=SRC, entries=entries)], capture_output=True,
                         text=True, check=True, env={k: v for k, v in os.environ.items() if k not in CAPACITY_ENV})
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallinfo2 (the probe's measure) is glibc's")
def test_bounded_caches_stop_growing_over_new_shapes():
    unbounded = _growth(None)
    if unbounded < 40:  # ~1.5 MB a shape where bf16 matmuls run through oneDNN (AVX512 / AMX CPUs)
        pytest.skip(f"this CPU's bf16 matmuls keep no per-shape kernels ({unbounded:.0f} MB over 150 shapes)")
    bounded = _growth(16)
    assert bounded < 0.3 * unbounded, (bounded, unbounded)


def _train(make_config, tmp_path, name: str, entries: int | None) -> tuple[list[float], str]:
    cfg = make_config(output_dir=str(tmp_path / name), training__max_steps=4, training__precision="bf16",
                      training__kernel_cache_entries=entries, training__learning_rate=1e-2, training__report_to=[],
                      eval__before=False, eval__generate_samples=0)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k not in CAPACITY_ENV} | {"OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "tuneforge", "train", str(path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / name / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines], done.stdout + done.stderr


def test_the_stage_bounds_the_caches_and_trains_the_same(make_config, tmp_path):
    """Two entries evict kernels many times a step (a step's shapes need more); the losses are those of the
    libraries' 1,024-entry caches bit for bit, and the run says which capacities it set."""
    evicting, said = _train(make_config, tmp_path, "two", 2)
    default, said_default = _train(make_config, tmp_path, "default", None)
    assert "kernel caches: ONEDNN_PRIMITIVE_CACHE_CAPACITY=2, LRU_CACHE_CAPACITY=2" in said
    assert "kernel caches" not in said_default
    assert len(evicting) == 4 and evicting == default
    assert all(v == v for v in evicting) and evicting[-1] < evicting[0]  # finite, and it trains
