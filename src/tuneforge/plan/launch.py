"""Which launcher and sharding a plan row needs on the user's hardware (`tuneforge plan ... --gpus N --gpu-gb G
--nodes M`; default: this machine). Per GPU, the launcher decides which memory columns are divided by the
number of GPUs (docs/distributed.md): ddp none; ZeRO-2 gradients + optimizer; fsdp / ZeRO-3 weights, gradients
and optimizer. Activations stay per GPU. The rule: ddp if the whole fits one GPU, else fsdp if a shard fits.

    row["launch"] = choose(row, "ddp", gpus=8, gpu_gib=80.0)
"""

from __future__ import annotations

import os

SHARDED = {"ddp": (), "zero2": ("gradients", "optimizer", "master_weights"),
           "fsdp": ("weights", "gradients", "optimizer", "master_weights")}
SHARDED["zero3"] = SHARDED["fsdp"]


def hardware() -> dict:
    """This machine: its CUDA GPUs (count, the smallest one's memory in GiB) and CPU cores."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gib = min((torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(gpus)), default=0.0)
    return {"gpus": gpus, "gpu_gib": gib, "cpus": os.cpu_count() or 1}


def per_gpu_gib(gib: dict, sharding: str, n: int) -> float:
    parts = ("weights", "gradients", "optimizer", "master_weights", "activations")
    return sum(gib.get(k, 0.0) / (n if k in SHARDED[sharding] else 1) for k in parts)


def _train(distributed: str, gpus: int, nodes: int) -> str:
    key = "" if distributed == "ddp" else f" training.distributed={distributed}"
    if nodes > 1:
        return (f"torchrun --nnodes {nodes} --node_rank R --nproc_per_node {gpus} --rdzv_backend c10d "
                f"--rdzv_endpoint HOST0:29500 --rdzv_id RUN -m tuneforge train CONFIG.yaml{key}  # on every machine")
    if gpus == 1:
        return f"tuneforge train CONFIG.yaml{key}"
    return f"tuneforge train CONFIG.yaml{key} --nproc {gpus}   # = torchrun --nproc_per_node {gpus} -m tuneforge train"


def choose(row: dict, distributed: str, gpus: int, gpu_gib: float, nodes: int = 1, zero_stage: int = 2) -> dict:
    """{'launcher', 'sharding', 'per_gpu_gib', 'fits', 'command', 'note'} for a plan row on `gpus` GPUs per
    machine of `gpu_gib` each (gpus 0: the CPU), given the config's training.distributed."""
    gib, n = row["gib"], max(gpus, 1) * nodes
    if gpus == 0:
        note = ("CPU: one process uses every core; --nproc N / torchrun run ddp or fsdp over gloo (proven in CI); "
                "`accelerate launch` starts a single process on a CPU machine (measured, accelerate 1.15)")
        if distributed == "deepspeed":
            note = ("deepspeed on the CPU: --nproc N over gloo (ZeRO-2/3 proven on 2 ranks by make deepspeed-check; "
                    "needs tuneforge[deepspeed]); fsdp shards the same columns without the extra. " + note)
        sharded = distributed in ("fsdp", "deepspeed")
        cmd = _train(distributed, 2, 1) if sharded else _train(distributed, 1, 1)
        return {"launcher": "torchrun (--nproc)" if sharded else "one process", "sharding": "none",
                "per_gpu_gib": None, "fits": None, "command": cmd, "note": note}
    if distributed == "deepspeed":
        sharding = f"zero{zero_stage}"
        need = per_gpu_gib(gib, sharding, n)
        return {"launcher": "torchrun" + (" (--nproc)" if nodes == 1 else f", {nodes} nodes"), "sharding": sharding,
                "per_gpu_gib": need, "fits": need <= gpu_gib, "command": _train("deepspeed", gpus, nodes),
                "note": "the loop drives the DeepSpeed engine itself (its config from the training block; proven on "
                        "CPU ranks, not yet on GPUs); `--launch-files LAUNCH_DIR` also writes ds_config.json + "
                        "accelerate.yaml for `accelerate launch --config_file LAUNCH_DIR/accelerate.yaml` (validated, "
                        "not run)"}
    whole = per_gpu_gib(gib, "ddp", n)
    if n == 1:
        note = "" if whole <= gpu_gib else ("does not fit one GPU: try gradient checkpointing, a smaller batch, "
                                            "qlora, or several GPUs")
        return {"launcher": "one process", "sharding": "none", "per_gpu_gib": whole, "fits": whole <= gpu_gib,
                "command": _train("ddp", 1, 1), "note": note}
    pick = "ddp" if whole <= gpu_gib else "fsdp"
    need, notes = per_gpu_gib(gib, pick, n), []
    if pick == "fsdp":
        notes.append(f"the whole ({whole:.2f} GiB) does not fit one GPU; ZeRO-2 would need "
                     f"{per_gpu_gib(gib, 'zero2', n):.2f} GiB per GPU")
    if distributed != pick:
        notes.append(f"the config says training.distributed={distributed}; {pick} is "
                     + ("enough here (less communication)" if pick == "ddp" else "what this needs"))
    if need > gpu_gib:
        notes.append(f"does not fit even fully sharded over {n} GPUs: gradient checkpointing, qlora or more GPUs")
    note = "; ".join(notes)
    return {"launcher": "torchrun" + (" (--nproc)" if nodes == 1 else f", {nodes} nodes"), "sharding": pick,
            "per_gpu_gib": need, "fits": need <= gpu_gib, "command": _train(pick, gpus, nodes), "note": note}


def launch_lines(rows: list[dict], hw: dict) -> list[str]:
    where = (f"{hw['gpus']} GPU(s) x {hw['gpu_gib']:.0f} GiB" if hw["gpus"] else f"CPU ({hw['cpus']} cores)")
    where += f", {hw['nodes']} machine(s)" if hw.get("nodes", 1) > 1 else ""
    lines = [f"launch on {where}:"]
    for r in rows:
        if "launch" not in r:
            continue
        la = r["launch"]
        size = "" if la["per_gpu_gib"] is None else f", {la['per_gpu_gib']:.2f} GiB per GPU"
        lines.append(f"  {r['method']}: {la['launcher']}, sharding {la['sharding']}{size}"
                     f"{'' if la['fits'] in (None, True) else ' (does NOT fit)'}\n    {la['command']}"
                     + (f"\n    note: {la['note']}" if la["note"] else ""))
    return lines
