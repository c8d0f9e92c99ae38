"""One packed row's causal attention, per sample, forward + backward, by kernel: SDPA (the CPU's flash kernel) against
tuneforge's plain-ops path for short bf16 samples (tuneforge/train/attention.py `_short_sample_attention`), on the
embedded default's attention shape (9 query heads, 3 key/value heads, head dim 64), 30 layers' worth per
repetition, the kernels interleaved. Also each kernel's error against an fp32 reference (output and gradients).

    python bench/attention_kernels.py --threads 1 --lengths 110,150,130,140 --lengths 250,260 --lengths 500 \\
        --reps 5 --out bench/results/attention_kernels.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from env_record import environment  # noqa: E402

from tuneforge.train.attention import _short_sample_attention  # noqa: E402

HEADS, KV_HEADS, DIM, LAYERS = 9, 3, 64, 30


def sdpa(q, k, v, dtype):
    return F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=True,
                                          enable_gqa=True).transpose(1, 2)


def short(q, k, v, dtype):
    return _short_sample_attention(q, k, v, None, dtype)


KERNELS = {"sdpa": sdpa, "short": short}


def row(lengths: list[int], dtype: torch.dtype, seed: int = 0):
    """(q, k, v) of one packed row as transformers hands them: (1, heads, N, dim) views of (1, N, heads, dim)."""
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    return [torch.randn(1, n, h, DIM, generator=g).to(dtype).transpose(1, 2).requires_grad_()
            for h in (HEADS, KV_HEADS, KV_HEADS)]


def forward_backward(kernel, tensors, lengths, dtype) -> list[torch.Tensor]:
    q, k, v = tensors
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    out = torch.cat([kernel(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], dtype)
                     for s, e in zip(bounds, bounds[1:], strict=False)], 1)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out.float() * weights).sum().backward()
    return [out.detach().float()] + [t.grad.float() for t in tensors]


def errors(lengths: list[int], dtype: torch.dtype) -> dict[str, list[float]]:
    """Each kernel's max error relative to the reference's max, for (output, dq, dk, dv); the reference: SDPA in
    fp32 on the same (rounded) inputs."""
    ref = forward_backward(sdpa, [t.detach().float().requires_grad_() for t in row(lengths, dtype)], lengths,
                           torch.float32)
    return {name: [float((a - b).abs().max() / b.abs().max()) for a, b in
                   zip(forward_backward(kernel, row(lengths, dtype), lengths, dtype), ref, strict=True)]
            for name, kernel in KERNELS.items()}


def timed(lengths: list[int], dtype: torch.dtype, reps: int) -> dict[str, list[float]]:
    tensors = row(lengths, dtype)
    seconds: dict[str, list[float]] = {name: [] for name in KERNELS}
    for _ in range(reps):
        for name, kernel in KERNELS.items():
            started = time.process_time()
            for _ in range(LAYERS):
                for t in tensors:
                    t.grad = None
                forward_backward(kernel, tensors, lengths, dtype)
            seconds[name].append(time.process_time() - started)
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", action="append", help="one packed row's sample lengths, comma-separated")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    rows = []
    for spec in args.lengths or ["110,150,130,140"]:
        lengths = [int(x) for x in spec.split(",")]
        seconds = timed(lengths, dtype, args.reps)
        med = {k: statistics.median(v) for k, v in seconds.items()}
        rows.append({"lengths": lengths, "cpu_seconds": seconds, "median": med, "speedup": med["sdpa"] / med["short"],
                     "errors": errors(lengths, dtype)})
        print(f"{spec:>20s}: sdpa {med['sdpa']:.3f} CPU s ({min(seconds['sdpa']):.3f}-{max(seconds['sdpa']):.3f}), "
              f"short {med['short']:.3f} ({min(seconds['short']):.3f}-{max(seconds['short']):.3f}): "
              f"x{rows[-1]['speedup']:.2f}; error vs fp32 (out, dq, dk, dv) "
              + "; ".join(f"{k} " + ",".join(f"{e:.1e}" for e in v) for k, v in rows[-1]["errors"].items()), flush=True)
    result = {"command": "python bench/attention_kernels.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "dtype": args.dtype, "threads": args.threads, "reps": args.reps, "layers": LAYERS,
              "shape": {"heads": HEADS, "kv_heads": KV_HEADS, "dim": DIM}, "rows": rows, "environment": environment()}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
