"""The GPU check, in one call (`make gpu-check`): LoRA, QLoRA and full SFT of the embedded default on the device,
each against the same run on the CPU in fp32 (first N step losses), real tokens/s, MFU against a bf16 matmul peak
measured in the same run, peak GPU memory against `tuneforge plan`'s estimate, and the seeds' recipe
(transformers.Trainer + peft, fp16, device_map="auto", padding to max_length 512) side by side as a ratio.
Offline: it uses the packages already installed (their versions are printed first) and the vendored rows.

    python bench/gpu_check.py                                    # cuda, 10 steps per run -> bench/results/gpu.json
    python bench/gpu_check.py --device cpu --max-steps 2 --model DIR --out /tmp/g.json   # CI (tests/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from sftbench.data import load_rows, split_rows  # noqa: E402

PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "safetensors", "tuneforge")
METHODS = {"lora": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
           "qlora": {"name": "qlora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
           "full": {"name": "full"}}
LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}


def environment(device: torch.device) -> dict:
    out = {"python": platform.python_version(), "device": str(device)}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    """FLOP/s of a square matmul in `dtype` on `device` (4096 on a GPU, 1024 on a CPU), best of short bursts."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best, end = 0.0, time.perf_counter() + seconds
    while True:
        sync(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - start))
        if time.perf_counter() > end:
            return best


def write_rows(tmp: Path, train_rows: int, eval_rows: int) -> tuple[Path, Path]:
    train, evals = split_rows(load_rows(), train_rows, eval_rows)
    paths = tmp / "train.jsonl", tmp / "eval.jsonl"
    for path, rows in zip(paths, (train, evals), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def tuneforge_run(args, method: str, device: str, precision: str, steps: int, data: tuple[Path, Path],
                  out: Path) -> dict:
    """`tuneforge train` in this process; losses, real tokens/s, model FLOPs, eval loss, peak GPU memory."""
    from tuneforge.config.schema import Config
    from tuneforge.stages import STAGES

    cfg = Config.model_validate({
        "model": args.model, "stage": "sft", "method": METHODS[method], "seed": 0, "output_dir": str(out),
        "data": {"train": str(data[0]), "eval": str(data[1])},
        "training": {"max_steps": steps, "batch_size": args.batch, "learning_rate": LR[method], "warmup_ratio": 0.0,
                     "lr_scheduler": "constant", "max_length": 512, "precision": precision, "device": device,
                     "progress": False},
        "eval": {"before": False, "generate_samples": 0}})
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    STAGES["sft"](cfg, log=lambda _m: None)
    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["train"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {"losses": [h["loss"] for h in log], "tokens_per_second": train["tokens_per_second"],
            "train_seconds": train["train_seconds"], "model_flops": train["model_flops"],
            "precision": train["precision"], "eval_loss": metrics["eval_after"].get("loss"),
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else None}


def plan_gib(args, method: str, precision: str) -> float | None:
    from tuneforge.models.load import resolve_model
    from tuneforge.plan.estimate import estimate

    params = {k: v for k, v in METHODS[method].items() if k != "name"}
    params.pop("dropout", None)
    try:
        return estimate(str(resolve_model(args.model)), method, batch_size=args.batch, seq_len=512,
                        precision="bf16" if precision in ("bf16", "fp16") else "fp32", **params)["gib"]["total"]
    except Exception as exc:  # the estimate is a comparison column; its failure must not hide the run's figures
        print(f"plan estimate for {method} failed: {exc}", file=sys.stderr)
        return None


def seeds_recipe(args, device: torch.device, data: tuple[Path, Path], steps: int, tmp: Path) -> dict:
    """What the seeds' scripts do on a rented GPU: fp32 weights with device_map="auto", Trainer(fp16=True)
    (fp16 autocast + gradient scaler), padding="max_length" 512, prompt and pad labels -100. On the CPU
    (CI) fp16 is not available to the Trainer: fp32 there."""
    import peft
    from sftbench.data import render
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

    from tuneforge.models.load import resolve_model

    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    rows = []
    for line in data[0].read_text().splitlines():
        s = json.loads(line)
        enc = tok(render(tok, s), padding="max_length", max_length=512, truncation=True, return_tensors="pt")
        n_prompt = len(tok(render(tok, s, prompt_only=True))["input_ids"])
        ids, mask = enc["input_ids"][0], enc["attention_mask"][0]
        labels = ids.clone()
        labels[:n_prompt] = -100
        labels[mask == 0] = -100
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    set_seed(0)
    cuda = device.type == "cuda"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="auto" if cuda else None)
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                       target_modules="all-linear", task_type="CAUSAL_LM"))
    real = []
    model.register_forward_pre_hook(lambda m, a, kw: real.append(int(kw["attention_mask"].sum())) if m.training
                                    else None, with_kwargs=True)
    targs = TrainingArguments(output_dir=str(tmp / "seeds"), per_device_train_batch_size=args.batch,
                              learning_rate=LR["lora"], max_steps=steps, report_to="none", save_strategy="no", seed=0,
                              fp16=cuda, use_cpu=not cuda, logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=rows)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    trainer.train()
    sync(device)
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"losses": losses, "tokens_per_second": sum(real) / seconds, "train_seconds": seconds,
            "precision": "fp16" if cuda else "fp32", "padding": "max_length 512",
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (CI)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--max-steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--methods", default="lora,qlora,full")
    p.add_argument("--train-rows", type=int, default=0, help="first N train rows (0: all 140)")
    p.add_argument("--peak-seconds", type=float, default=2.0)
    p.add_argument("--skip-cpu-reference", action="store_true", help="no CPU fp32 runs (their losses are compared)")
    p.add_argument("--out", default="bench/results/gpu.json")
    args = p.parse_args(argv)

    from tuneforge.device import select

    device = select(args.device, "--device")
    env = environment(device)
    print("versions:", json.dumps(env), flush=True)
    peak = matmul_peak(device, torch.bfloat16, args.peak_seconds)
    print(f"bf16 matmul peak on {device}: {peak / 1e12:.2f} TFLOP/s", flush=True)
    result = {"env": env, "bf16_peak_flops": peak, "max_steps": args.max_steps, "batch": args.batch, "runs": {}}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        data = write_rows(tmp, args.train_rows or args.batch * args.max_steps, 8)
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            run = tuneforge_run(args, method, str(device), "auto", args.max_steps, data, tmp / f"{method}-dev")
            run["plan_gib"] = plan_gib(args, method, run["precision"])
            run["mfu"] = run["model_flops"] / max(run["train_seconds"], 1e-9) / peak
            if not args.skip_cpu_reference:
                ref = tuneforge_run(args, method, "cpu", "fp32", args.max_steps, data, tmp / f"{method}-cpu")
                run["cpu_fp32_losses"] = ref["losses"]
                run["max_rel_loss_diff"] = max(abs(a - b) / abs(b) for a, b in zip(run["losses"], ref["losses"],
                                                                                  strict=True))
            result["runs"][method] = run
            print(f"{method}: {json.dumps(run)}", flush=True)
        result["seeds_recipe"] = seeds_recipe(args, device, data, args.max_steps, tmp)
    lora, seeds = result["runs"].get("lora"), result["seeds_recipe"]
    if lora:
        result["lora_vs_seeds_tokens_per_second"] = lora["tokens_per_second"] / seeds["tokens_per_second"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("\n| run | precision | real tok/s | MFU | peak GPU GiB | plan GiB | max rel loss diff vs CPU fp32 |")
    print("|---|---|---|---|---|---|---|")
    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for name, r in result["runs"].items():
        print(f"| {name} | {r['precision']} | {r['tokens_per_second']:.0f} | {100 * r['mfu']:.1f}% | "
              f"{num(r['peak_gpu_gib'], '.2f')} | {num(r['plan_gib'], '.2f')} | "
              f"{num(r.get('max_rel_loss_diff'), '.1e')} |")
    print(f"| seeds' recipe | {seeds['precision']} | {seeds['tokens_per_second']:.0f} | - | "
          f"{num(seeds['peak_gpu_gib'], '.2f')} | - | - |")
    if lora:
        print(f"tuneforge LoRA / seeds' recipe, real tokens/s: {result['lora_vs_seeds_tokens_per_second']:.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
