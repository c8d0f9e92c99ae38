"""Atomic checkpoints: written into a temp dir, a COMPLETE marker last, then renamed into place.
Auto-resume takes the newest complete, readable checkpoint and warns about any it skips; an explicitly
named bad checkpoint is an error. Only safetensors and JSON are written or read (no pickle).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tuneforge.errors import UserError
from tuneforge.fsutil import make_temp_dir

MARKER = "COMPLETE"
UNREADABLE = (OSError, ValueError, KeyError, SafetensorError)


@dataclass
class TrainState:
    step: int
    bad_steps: int
    history: list[dict[str, Any]]
    tokens_seen: int
    train_seconds: float


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return {k: v.contiguous() for k, v in tensors.items()}, {"param_groups": sd["param_groups"]}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(ckpt_root: Path, model, optimizer, scheduler, state: TrainState, keep: int) -> Path:
    final = ckpt_root / f"step-{state.step:07d}"
    tmp = make_temp_dir(ckpt_root, f".{final.name}.tmp.")
    try:
        weights = trainable_state(model)
        if not all(torch.isfinite(t).all() for t in weights.values()):
            raise UserError(f"refusing to save non-finite weights at step {state.step}")
        save_file(weights, str(tmp / "trainable.safetensors"))
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file({"torch_cpu": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        meta = {
            "step": state.step,
            "bad_steps": state.bad_steps,
            "tokens_seen": state.tokens_seen,
            "train_seconds": state.train_seconds,
            "history": state.history,
            "optimizer": opt_meta,
            "scheduler": sched,
        }
        (tmp / "state.json").write_text(json.dumps(meta))
        for f in tmp.iterdir():  # data on disk before the marker says it is
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        (tmp / MARKER).write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.glob("step-*") if p.is_dir() and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _read(path: Path) -> dict[str, Any]:
    if not (path / MARKER).is_file():
        raise ValueError("no COMPLETE marker (the save was interrupted)")
    meta = json.loads((path / "state.json").read_text())
    return {
        "meta": meta,
        "weights": load_file(str(path / "trainable.safetensors")),
        "optimizer": load_file(str(path / "optimizer.safetensors")),
        "rng": load_file(str(path / "rng.safetensors"))["torch_cpu"],
    }


def find_resume(resume: str, ckpt_root: Path) -> tuple[Path, dict[str, Any]] | None:
    """`auto`: newest readable complete checkpoint (None if there is none). A path: that one or an error."""
    if resume != "auto":
        path = Path(resume)
        try:
            return path, _read(path)
        except UNREADABLE as exc:
            raise UserError(f"resume={resume}: not a usable checkpoint ({exc})") from None
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            return path, _read(path)
        except UNREADABLE as exc:
            warnings.warn(f"skipping unreadable checkpoint {path} ({exc}); trying the previous one", stacklevel=2)
    return None


def restore(loaded: dict[str, Any], model, optimizer, scheduler) -> TrainState:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in loaded["weights"]]
    if missing:
        raise UserError(f"checkpoint does not match the model: missing {missing[:3]}")
    with torch.no_grad():
        for name, value in loaded["weights"].items():
            params[name].copy_(value)
    meta = loaded["meta"]
    _restore_optimizer(optimizer, loaded["optimizer"], meta["optimizer"])
    scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    torch.set_rng_state(loaded["rng"])
    return TrainState(meta["step"], meta["bad_steps"], meta["history"], meta["tokens_seen"], meta["train_seconds"])
