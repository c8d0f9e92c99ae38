"""What a benchmark figure was measured on: versions, git commit, CPU model and flags, threads, load, and a
matmul peak measured in the same run. Any bench script can import it (scripts in bench/ have bench/ on sys.path):

    from env_record import environment, matmul_peak
    record = {"env": environment(), "peak": matmul_peak(torch.bfloat16, (512, 576, 1536))}

    python bench/env_record.py          # print this machine's record as JSON
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers", "tuneforge", "numpy")
# The flags that decide which matmul kernels a CPU has (bf16 dot products, AMX tiles).
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_bf16", "amx_int8")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: Path = ROOT) -> dict[str, object]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty), "dirty_files": dirty.splitlines()[:50]}


def cpu_info() -> dict[str, object]:
    """Model name and flags from /proc/cpuinfo (Linux), lscpu's summary where it exists."""
    info: dict[str, object] = {"machine": platform.machine(), "logical_cpus": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags", "").split()
    info["model"] = fields.get("model name") or platform.processor() or None
    info["flags_of_interest"] = {f: f in flags for f in FLAGS_OF_INTEREST} if flags else None
    info["flags"] = flags
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
        keep = ("Model name", "Socket(s)", "Core(s) per socket", "Thread(s) per core", "CPU(s)", "L2 cache",
                "L3 cache", "Hypervisor vendor", "Virtualization type", "CPU max MHz")
        info["lscpu"] = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())
                         if k.strip() in keep}
    except (OSError, subprocess.SubprocessError):
        info["lscpu"] = None
    return info


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict[str, object]:
    import torch

    torch_info = {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "mkldnn": torch.backends.mkldnn.is_available(), "cuda": torch.cuda.is_available()}
    env_keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TUNEFORGE_HOME", "LD_PRELOAD", "MALLOC_CONF")
    return {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": versions(),
            "git": git_state(), "cpu": cpu_info(), "memory_gib": memory_gib(), "load_average": load_average(),
            "torch": torch_info, "env": {k: os.environ.get(k) for k in env_keys}, "platform": platform.platform()}


def with_environment(report: dict, path: str | None = None) -> dict:
    """`report` with this run's environment added last, written as JSON to `path` (parents made) when one is given."""
    report = {**report, "environment": environment()}
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1))
    return report


def matmul_peak(dtype, shape: tuple[int, int, int] = (2048, 2048, 2048), seconds: float = 2.0,
                window: float = 0.25) -> float:
    """Best FLOP/s over short windows of (m x k) @ (k x n) products: the best window, since cores may be shared."""
    import torch

    m, k, n = shape
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        iters, t0 = 0, time.perf_counter()
        while iters == 0 or time.perf_counter() - t0 < window:
            a @ b
            iters += 1
        best = max(best, 2 * m * k * n * iters / (time.perf_counter() - t0))
    return best


if __name__ == "__main__":
    print(json.dumps(environment(), indent=2))
