"""What a run cost, for metrics.json's `train` block: steps, real tokens and the loss's own unit (supervised
tokens, samples, pairs, ...) per second, wall and train seconds, peak RSS, parameters, model FLOPs. A resumed
run's wall_seconds is the sum over its processes (process_wall_seconds lists them, train/wall.py); the rates
divide the tokens of every process by the training seconds of every process, never by wall time.

    cost = cost_block(result, wall_start, model, (trainable, total), "bf16", "supervised_tokens")
"""

from __future__ import annotations

import resource
import time

from tuneforge.train import distributed as ddp
from tuneforge.train import wall
from tuneforge.train.loop import TrainResult


def model_flops(model, tokens: int, trainable: int, total: int) -> float:
    """~4 x params x tokens when the base is frozen (no weight gradients), ~6x when everything trains."""
    emb = model.get_input_embeddings().weight.numel()
    factor = 6 if trainable >= 0.5 * total else 4
    return float(factor * (total - emb) * tokens)


def cost_block(result: TrainResult, wall_start: float, model, counts: tuple[int, int], precision: str,
               unit: str) -> dict:
    trainable, total = counts
    train_seconds = max(result.train_seconds, 1e-9)
    processes = [*wall.so_far()[:-1], time.perf_counter() - wall_start]  # earlier processes, then this one
    return {
        "steps": result.steps,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "tokens": result.tokens_seen,
        unit: result.supervised_seen,
        "tokens_per_second": result.tokens_seen / train_seconds,
        f"{unit}_per_second": result.supervised_seen / train_seconds,
        "train_seconds": result.train_seconds,
        "wall_seconds": sum(processes),
        "process_wall_seconds": processes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100 * trainable / total,
        "precision": precision,
        "compile": result.compiled,  # training.compile: the training forward ran through torch.compile
        "model_flops": model_flops(model, result.tokens_seen, trainable, total),
        "resumed_from": result.resumed_from,
        "world_size": ddp.world_size(),  # processes that shared each step (torchrun / accelerate launch)
        # ddp | fsdp | none, and the parameter / optimizer-state bytes each rank held while training
        "sharding": result.sharding,
        "resume_changes": result.resume_changes,  # what resume_allow_changes let through, if anything
        "skipped_steps": result.skipped_steps,  # non-finite steps whose update was skipped
    }
