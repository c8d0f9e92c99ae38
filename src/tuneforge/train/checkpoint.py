"""Atomic checkpoints: written into a temp dir, fsynced, a COMPLETE marker last, then renamed into place;
old ones are renamed away before they are deleted, so a killed process never leaves a half checkpoint under
a `step-*` name. Auto-resume takes the newest complete, readable checkpoint and warns about any it skips;
an explicitly named bad checkpoint is an error. Each checkpoint records what the run was (model and data
fingerprints, seed, learning rate: tuneforge.train.guards); resuming with any of them changed is refused
unless `resume_allow_changes` names it. Only safetensors and JSON are written or read (no pickle).

    path = save_checkpoint(ckpt_root, model, optimizer, scheduler, state, keep=2, guards=run_guards(cfg))
    path, loaded = find_resume("auto", ckpt_root)
    changes = check_guards(loaded, run_guards(cfg), cfg.resume_allow_changes, path)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tuneforge.errors import ConfigError, NonFiniteLoss, UserError
from tuneforge.fsutil import make_temp_dir
from tuneforge.train import fsdp, rng_state, wall

MARKER = "COMPLETE"  # written last; holds each file's size and sha256, so any later damage is detected
FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json")
UNREADABLE = (OSError, ValueError, KeyError, TypeError, SafetensorError)
STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointWriteError(UserError):
    """The file system refused a checkpoint write (disk full, quota, read-only, permissions). The previous
    checkpoint is intact and no partial one is left; exit code 74 (EX_IOERR in sysexits.h)."""

    exit_code = 74


@dataclass
class TrainState:
    step: int
    bad_steps: int
    history: list[dict[str, Any]]
    tokens_seen: int
    train_seconds: float
    skipped: list[dict[str, Any]] = field(default_factory=list)  # non-finite steps whose update was skipped
    evals: list[dict[str, Any]] = field(default_factory=list)  # periodic evaluations so far
    scaler: dict[str, Any] = field(default_factory=dict)  # fp16's GradScaler (scale, growth tracker)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"{idx}.{key}"] = fsdp.full(value) if torch.is_tensor(value) else torch.tensor(value)
    return {k: v.contiguous() for k, v in tensors.items()}, {"param_groups": sd["param_groups"]}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = fsdp.like(value, params[int(idx)])  # a shard under FSDP
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole tensors, also under FSDP (then an all-gather: every rank calls it)."""
    return {n: fsdp.full(p.detach()).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def gather_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict, dict]:
    """(trainable weights, optimizer tensors, optimizer meta), whole: under FSDP every rank calls this and
    rank 0 passes the result to save_checkpoint(tensors=...). The files are those of a one-process run."""
    return (trainable_state(model), *_optimizer_tensors(optimizer))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a directory too: makes the entries (the rename) durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: Path) -> dict[str, Any]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _discard(path: Path) -> None:
    """Rename away first (atomic), then delete: a kill mid-delete leaves a hidden leftover, never a
    `step-*` directory with some files gone."""
    trash = path.with_name(f".{path.name}.old.{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(ckpt_root: Path) -> None:
    """Temp and renamed-away dirs of a save or delete that a killed process never finished."""
    for p in ckpt_root.glob(".step-*"):
        if p.is_dir() and (".tmp." in p.name or ".old." in p.name):
            shutil.rmtree(p, ignore_errors=True)


def _write_error(exc: OSError, final: Path) -> CheckpointWriteError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    reason = "disk full (no space left on device)" if full else (exc.strerror or str(exc))
    where = f" writing {exc.filename}" if exc.filename else ""
    try:
        previous = list_checkpoints(final.parent)
    except OSError:
        previous = []
    kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "there is no earlier checkpoint"
    hint = "free space (or lower training.save_total_limit)" if full else "fix the file system problem"
    return CheckpointWriteError(f"could not save checkpoint {final}: {reason}{where}; {kept} and no partial "
                                f"checkpoint was left. Training stopped: {hint}, then continue with resume=auto")


def save_checkpoint(ckpt_root: Path, model, optimizer, scheduler, state: TrainState, keep: int, *,
                    guards: dict[str, Any] | None = None, tensors: tuple[dict, dict, dict] | None = None) -> Path:
    """`guards` (run_guards(cfg)) is what check_guards compares on resume; without it resume warns.
    `tensors`: gather_state's result, when the state had to be gathered from every rank (FSDP)."""
    final = ckpt_root / f"step-{state.step:07d}"
    weights, opt_tensors, opt_meta = tensors or gather_state(model, optimizer)
    bad = [n for n, t in weights.items() if not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteLoss(f"refusing to save non-finite weights at step {state.step} "
                            f"({len(bad)} tensors, e.g. {bad[0]})")
    meta = {"step": state.step, "bad_steps": state.bad_steps, "tokens_seen": state.tokens_seen,
            "train_seconds": state.train_seconds, "history": state.history, "skipped": state.skipped,
            "evals": state.evals, "optimizer": opt_meta, "guards": guards, "scaler": state.scaler,
            "wall_seconds": wall.so_far(),  # each process's seconds up to this save (train/wall.py)
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}}
    tmp = None
    try:
        if ckpt_root.is_dir():
            _remove_leftovers(ckpt_root)
        tmp = make_temp_dir(ckpt_root, f".{final.name}.tmp.")
        save_file(weights, str(tmp / "trainable.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_state.capture(), str(tmp / "rng.safetensors"))  # CPU, and each GPU's where CUDA is
        (tmp / "state.json").write_text(json.dumps(meta))
        write_manifest(tmp, FILES)
        if final.exists():  # the same step again (resumed from an older one): replace it
            _discard(final)
        os.replace(tmp, final)
        tmp = None
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(exc, final) from exc
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _fsync(ckpt_root)  # the rename survives a power cut too
    except OSError as exc:  # the checkpoint is complete either way
        warnings.warn(f"checkpoint {final} is complete but {ckpt_root} could not be synced ({exc})", stacklevel=2)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        try:
            _discard(old)
        except OSError:  # the new checkpoint is complete; an old one left over is only disk space
            shutil.rmtree(old, ignore_errors=True)
    return final


def _step_dirs(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if STEP_DIR.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints (with their marker), oldest first."""
    return [p for p in _step_dirs(ckpt_root) if (p / MARKER).is_file()]


def _load(path: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path / name))
    except UNREADABLE as exc:
        raise ValueError(f"{name}: {exc}") from None


def write_manifest(path: Path, names: Iterable[str]) -> None:
    """Hash and fsync each file (data on disk before the marker says it is), then write the COMPLETE marker
    holding each file's size and sha256, last. Also marks the HF Trainer's checkpoints (train/hf_bridge)."""
    manifest = {}
    for name in names:
        manifest[name] = _digest(path / name)
        _fsync(path / name)
    (path / MARKER).write_text(json.dumps({"files": manifest}))
    _fsync(path / MARKER)


def check_manifest(path: Path, required: Iterable[str] = FILES) -> None:
    """Every file as the marker recorded it, and `required` among them; ValueError naming the defect (a
    marker of a checkpoint saved before manifests, "ok", is taken on trust)."""
    if not (path / MARKER).is_file():
        raise ValueError("no COMPLETE marker (the save was interrupted)")
    text = (path / MARKER).read_text(errors="replace")
    if text.strip() == "ok":
        return
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{MARKER}: not a checkpoint manifest") from None
    for name in sorted({*required, *files}):
        if not (path / name).is_file():
            raise ValueError(f"{name}: missing")
        if _digest(path / name) != files.get(name):
            raise ValueError(f"{name}: size or sha256 differs from the {MARKER} manifest (damaged after saving)")


def _read(path: Path) -> dict[str, Any]:
    check_manifest(path)
    try:
        meta = json.loads((path / "state.json").read_text())
        required = ("step", "bad_steps", "history", "tokens_seen", "optimizer", "scheduler")
        missing = [k for k in required if k not in meta]
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"state.json: {exc}") from None
    if missing:
        raise ValueError(f"state.json: missing {missing}")
    weights = _load(path, "trainable.safetensors")
    if not all(torch.isfinite(t).all() for t in weights.values()):
        raise ValueError("trainable.safetensors: non-finite weights")
    rng = rng_state.check(_load(path, "rng.safetensors"))
    return {"meta": meta, "weights": weights, "optimizer": _load(path, "optimizer.safetensors"), "rng": rng}


def find_resume(resume: str, ckpt_root: Path) -> tuple[Path, dict[str, Any]] | None:
    """`auto`: newest readable complete checkpoint (None if there is none). A path: that one or an error."""
    if resume != "auto":
        path = Path(resume)
        try:
            return path, _read(path)
        except UNREADABLE as exc:
            raise ConfigError(f"key 'resume': {resume} is not a usable checkpoint ({exc}); resume=auto takes "
                              f"the newest complete one") from None
    for path in reversed(_step_dirs(ckpt_root)):  # incomplete ones too, so that each skip is reported
        try:
            return path, _read(path)
        except UNREADABLE as exc:
            warnings.warn(f"skipping unreadable checkpoint {path} ({exc}); trying the previous one", stacklevel=2)
    return None


def restore(loaded: dict[str, Any], model, optimizer, scheduler, put=None) -> TrainState:
    """`put(weights, optimizer tensors, optimizer meta)`, if given, restores the tensors instead (DeepSpeed)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = loaded["weights"]
    missing = [n for n in params if n not in saved]
    unexpected = [n for n in saved if n not in params]
    # (ZeRO-3 parameters are empty outside a forward; ds_shape is their whole shape)
    reshaped = [n for n in saved if n in params and saved[n].shape != getattr(params[n], "ds_shape", params[n].shape)]
    if missing or unexpected or reshaped:
        raise ConfigError(f"the checkpoint does not match the model's trainable parameters (did the method or "
                          f"model change?): missing {missing[:3]}, unexpected {unexpected[:3]}, "
                          f"shape differs {reshaped[:3]}")
    meta = loaded["meta"]
    if put is not None:
        put(saved, loaded["optimizer"], meta["optimizer"])
    else:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(fsdp.like(value, params[name]))  # this rank's shard under FSDP
        _restore_optimizer(optimizer, loaded["optimizer"], meta["optimizer"])
    scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    rng_state.restore(loaded["rng"])
    return TrainState(meta["step"], meta["bad_steps"], meta["history"], meta["tokens_seen"], meta["train_seconds"],
                      meta.get("skipped", []), meta.get("evals", []), meta.get("scaler") or {})
