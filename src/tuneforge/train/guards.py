"""Resume guards: what a checkpoint records about the run that saved it (the model's files, the training data's
bytes, the seed, the learning rate and its schedule), and the check that a resumed run is the same run. A change
is refused with a ConfigError naming it, unless `resume_allow_changes` lists it (then it is logged).

    guards = run_guards(cfg)                                   # saved with every checkpoint
    changes = check_guards(loaded, guards, cfg.resume_allow_changes, path)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.train.checkpoint import MARKER, list_checkpoints
from tuneforge.train.recipe import warmup_text

GUARDED = ("model", "data", "seed", "learning_rate", "lr_scheduler")
EDGE = 1 << 20  # bytes hashed at each end of a weights file: cheap, and catches a different model of one size


def _hash_file(digest, path: Path, edge: int | None = None) -> None:
    """The whole file, or (edge) its size and first/last `edge` bytes."""
    with open(path, "rb") as f:
        if edge is None:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            return
        size = os.fstat(f.fileno()).st_size
        digest.update(f"{path.name}:{size}:".encode())
        digest.update(f.read(edge))
        if size > edge:
            f.seek(max(edge, size - edge))
            digest.update(f.read(edge))


def schedule_text(training) -> str:
    """training's schedule and warmup as one comparable text: 'cosine, warmup_ratio 0.03' or 'constant,
    warmup_steps 5' (warmup_steps wins over the ratio, as in the loop and the TRL bridge)."""
    return f"{training.lr_scheduler}, {warmup_text(training.warmup_ratio, training.warmup_steps)}"


def run_guards(cfg, precision: str | None = None) -> dict[str, Any]:
    """What resume compares: the model (config, tokenizer and weight files; a hub id by name), the training
    data (sha256 of the file's bytes), the seed, the learning rate and its schedule (schedule_text; a
    checkpoint saved before the schedule was guarded is not compared on it); with `precision`, the resolved precision
    too (recorded, not compared: a resume with precision auto keeps it, saved_precision)."""
    from tuneforge.data.cache_keys import file_sha256
    from tuneforge.models import resolve_model

    resolved = Path(resolve_model(cfg.model))
    model_digest = hashlib.sha256()
    if resolved.is_dir():
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            if (resolved / name).is_file():
                _hash_file(model_digest, resolved / name)
        for weights in sorted(resolved.glob("*.safetensors")) + sorted(resolved.glob("*.bin")):
            _hash_file(model_digest, weights, EDGE)
    else:
        model_digest.update(str(resolved).encode())
    sources = [cfg.data.train] if isinstance(cfg.data.train, str) else cfg.data.train  # several: a mix
    if isinstance(cfg.data.train, str):  # one file: its sha256, remembered by stat beside the data caches
        data_sha = file_sha256(cfg.data.train)  # (a 4 GB corpus is not read again at every start)
    else:
        data_digest = hashlib.sha256()
        for source in sources:
            if not isinstance(source, str):  # the mix's weights are part of the data it trains on
                data_digest.update(f"{source.weight!r}:".encode())
            _hash_file(data_digest, Path(getattr(source, "path", source)))
        data_sha = data_digest.hexdigest()
    data = ", ".join(str(getattr(s, "path", s)) for s in sources)
    return {"model": {"name": cfg.model, "path": str(resolved), "sha256": model_digest.hexdigest()},
            "data": {"path": data, "sha256": data_sha},
            "seed": cfg.seed, "learning_rate": cfg.training.learning_rate,
            "lr_scheduler": schedule_text(cfg.training),
            **({"precision": precision} if precision is not None else {})}


def saved_precision(resume: str, ckpt_root: Path) -> str | None:
    """The precision the checkpoint a resume would take trained with (its guards'; None: none recorded, or no
    checkpoint). Read before the model is loaded, so precision auto can keep it (stages.skeleton)."""
    paths = [Path(resume)] if resume != "auto" else list(reversed(list_checkpoints(ckpt_root)))
    for path in paths:
        try:
            guards = json.loads((path / "state.json").read_text()).get("guards") or {}
        except (OSError, ValueError, AttributeError):
            continue  # unreadable: resume skips it too
        return guards.get("precision")
    return None


def _compared(guards: dict[str, Any], key: str) -> tuple[Any, str]:
    """(what must be equal, how to show it)."""
    value = guards.get(key)
    if isinstance(value, dict):
        return value.get("sha256"), f"{value.get('name') or value.get('path')} (sha256 {str(value.get('sha256'))[:12]})"
    return value, repr(value)


def check_guards(loaded: dict[str, Any], current: dict[str, Any], allowed: Iterable[str], path: Path) -> list[dict]:
    """The changes since the checkpoint was saved, each allowed by `resume_allow_changes`; a ConfigError
    naming every other change (old -> new) and the override key."""
    saved = loaded["meta"].get("guards")
    if not saved:
        warnings.warn(f"checkpoint {path} records no model/data fingerprints (saved before tuneforge checked "
                      "them): a changed model, data, seed, learning rate or schedule cannot be detected", stacklevel=2)
        return []
    changes = []
    for key in GUARDED:
        (old, old_text), (new, new_text) = _compared(saved, key), _compared(current, key)
        if key in saved and old != new:
            changes.append({"key": key, "old": old_text, "new": new_text})
    refused = [c for c in changes if c["key"] not in set(allowed)]
    if refused:
        what = "; ".join(f"{c['key']} changed: {c['old']} -> {c['new']}" for c in refused)
        keys = ",".join(c["key"] for c in refused)
        raise ConfigError(f"key 'resume': checkpoint {path} was saved by a different run ({what}). Resuming "
                          f"would not continue that run; set resume_allow_changes=[{keys}] to resume anyway, or "
                          f"use a new output_dir")
    return changes


def check_resume_config(saved_cfg, cfg, ckpt_root: Path) -> None:
    """Before output_dir/config.yaml is rewritten for a resumed run: the guarded keys of the run's saved
    config against the new one (a refused resume must leave the run's config as it was). Both are resolved by
    the recipe (the schedule a config leaves open is the method's), so a run saved before a default changed and
    resumed with its original YAML is refused rather than switched to the new default mid-run. The file contents
    (model weights, data bytes) are compared later against the checkpoint's fingerprints."""
    pairs = {"model": (saved_cfg.model, cfg.model), "data": (saved_cfg.data.train, cfg.data.train),
             "seed": (saved_cfg.seed, cfg.seed),
             "learning_rate": (saved_cfg.training.learning_rate, cfg.training.learning_rate),
             "lr_scheduler": (schedule_text(saved_cfg.training), schedule_text(cfg.training))}
    refused = [(key, old, new) for key, (old, new) in pairs.items()
               if old != new and key not in cfg.resume_allow_changes]
    complete = sorted((p for p in ckpt_root.glob("*-*") if (p / MARKER).is_file()),
                      key=lambda p: int(p.name.rsplit("-", 1)[1]) if p.name.rsplit("-", 1)[1].isdigit() else -1)
    if refused and complete:  # our step-N and the HF Trainer's checkpoint-N both carry the marker
        what = "; ".join(f"{key} changed: {old!r} -> {new!r}" for key, old, new in refused)
        keys = ",".join(key for key, _, _ in refused)
        raise ConfigError(f"key 'resume': checkpoint {complete[-1]} was saved by a different run ({what}). Resuming "
                          f"would not continue that run; set resume_allow_changes=[{keys}] to resume anyway, or "
                          f"use a new output_dir")
