"""Peak RSS of loading a model: tuneforge's load path (tuneforge.models.load_model: transformers' meta-device load
straight to the target device) against the classic path that low_cpu_mem_usage=False took in transformers 4.x
(build the model with random weights, then read the whole state dict and copy it in: two copies at the peak).
Each path runs in a fresh process; the figure is the peak RSS growth during the load and one read of every weight
(transformers 5 may leave fp32 weights memory-mapped, which costs RSS only once touched), against the weights' bytes.

    .venv/bin/python bench/load_memory.py [--model smollm2-135m-instruct] [--json bench/results/load_memory.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import gc, json, resource, sys, torch
from pathlib import Path
from tuneforge.models import load_model, resolve_model
from tuneforge.models.placement import weight_bytes
path, how = resolve_model(sys.argv[1]), sys.argv[2]
import transformers
from safetensors.torch import load_file
gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def rss_now():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 // 1024
start = rss_now()
if how == "tuneforge":
    model = load_model(sys.argv[1], device=torch.device("cpu"))
else:  # transformers 4.x with low_cpu_mem_usage=False: random init, then the whole state dict copied in
    config = transformers.AutoConfig.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        state |= load_file(str(f))
    model.load_state_dict(state, strict=False)
    del state
with torch.no_grad():  # read every weight once: memory-mapped weights count only once their pages are touched
    touched = sum(float(p.sum()) for p in model.parameters())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"how": how, "start_kb": start, "peak_kb": max(peak, before),
                  "weights": weight_bytes(path, torch.float32), "params": sum(p.numel() for p in model.parameters())}))
"""


def measure(model: str, how: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, how], capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["growth_mb"] = (row["peak_kb"] - row["start_kb"]) / 1024
    row["weights_mb"] = row["weights"] / 2**20
    row["growth_over_weights"] = row["growth_mb"] / row["weights_mb"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    rows = {how: measure(args.model, how) for how in ("tuneforge", "classic")}
    for how, r in rows.items():
        print(f"{how:10s} peak RSS growth {r['growth_mb']:8.1f} MB = {r['growth_over_weights']:.2f} x the fp32 weights "
              f"({r['weights_mb']:.1f} MB)")
    ratio = rows["tuneforge"]["growth_mb"] / rows["classic"]["growth_mb"]
    print(f"tuneforge / classic peak growth: {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows, "ratio": ratio,
                                               "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
