"""Multi-process data parallelism on torch.distributed (gloo on CPU, nccl on GPU), set up from the
environment that `torchrun` / `accelerate launch` export (WORLD_SIZE, RANK, MASTER_ADDR, ...).

    tuneforge train examples/quickstart.yaml --nproc 2        # = torchrun --nproc_per_node 2 -m tuneforge train ...
    accelerate launch --cpu --num_processes 2 -m tuneforge train examples/quickstart.yaml

With training.distributed=ddp every rank holds the whole (unwrapped) model and the same optimizer state (fsdp:
tuneforge.train.fsdp shards them); each optimizer step's examples are split across ranks, gradients are
summed with one all-reduce, and the loss is normalised by the supervised tokens of the *global* step, so N
processes take exactly the single-process step (DESIGN 4.7).
Rank 0 alone logs, evaluates and writes; the others wait at a barrier.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

_COMM = [torch.device("cpu")]  # where the small tensors of sum_values / max_value live (nccl: the GPU)


def init_from_env(device: torch.device | None = None) -> bool:
    """Join the process group when launched with WORLD_SIZE > 1; idempotent. True when distributed.
    nccl when the run's device is a CUDA GPU (this rank's, cuda:LOCAL_RANK), gloo otherwise."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
        _COMM[0] = device
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    return True


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard(indices: list[int]) -> list[int]:
    """This rank's share of one micro-batch (strided, so shares differ by at most one example)."""
    return indices[rank() :: world_size()]


def sum_values(*values: float) -> list[float]:
    """Sum numbers over ranks (float64, so token counts stay exact)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_COMM[0])
    dist.all_reduce(t)
    return t.tolist()


def max_value(value: int) -> int:
    """The largest value over ranks (e.g. a stop signal seen by any rank)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_COMM[0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce (sum) the gradients through one flat buffer; a rank with no examples contributes zeros.
    Losses are already divided by the global token count, so a sum (not DDP's mean) is the right reduction."""
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
        offset += n


def gather_object(obj) -> list:
    """Every rank's value of a picklable object, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's value of a picklable object on every rank (e.g. the checkpoint path a signal produced)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def relaunch(nproc: int, argv: list[str]) -> int:
    """`tuneforge train --nproc N ...`: re-run the same command under torch's launcher (what `torchrun
    --standalone --nproc_per_node N -m tuneforge ...` does), in this process so that the exit code is the
    ranks' own: 2 for a user error, 128+N after signal N, not torchrun's 1 for any failure."""
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "tuneforge", *argv])
    # what torch.distributed.run.run does for --standalone (torch 2.13): one node, a local c10d rendezvous
    args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    config, cmd, cmd_args = config_from_args(args)
    try:
        elastic_launch(config=config, entrypoint=cmd)(*cmd_args)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()  # the first rank to fail; the others were stopped after it
        return 128 - failure.exitcode if failure.exitcode < 0 else failure.exitcode  # -N: killed by signal N
    except SignalException as exc:  # the launcher itself got SIGINT/SIGTERM; the ranks were stopped
        return 128 + int(exc.sigval)
    return 0
