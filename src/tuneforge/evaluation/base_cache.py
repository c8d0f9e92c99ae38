"""The base model's scores (eval.before) remembered across runs: a rerun of a config with another rate, each
method of `tuneforge compare` and each hpo trial evaluate the same base on the same rows, so the first run's
scores serve the others (the quickstart: eval loss and 40 generations, ~10 s before its first step).

The key is everything the scores depend on: the model's files (config and weights, by content: file_sha256
remembers digests by stat), the eval rows as tokenized (ids, labels, generation prompts and references: data,
template, tokenizer and max_length are in them), the settings of the evaluation (eval block, batch size, pack
length, chunked loss, per-sample attention, packing, precision, device type, 4-bit base, remote code), the torch
and transformers versions, and the source of the code that computes the scores (a change to it is a miss, not a
stale hit). eval.before_cache=false computes them afresh. Entries live in
<data cache>/eval-before/<key>.json; `tuneforge cache clear` removes them.

    saved = cached_or_computed(run, compute, parts)    # what skeleton.eval_before keeps in eval_before.json
    key = base_key(run, parts)       # None where the model is not a local directory
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from tuneforge.data.cache_keys import data_cache_dir, file_sha256
from tuneforge.fsutil import write_json_atomic
from tuneforge.train import heap

DIR = "eval-before"
VERSION = 1
# the code between the model and its base scores: any edit to these files changes the key
CODE = ("tuneforge.evaluation.base_cache", "tuneforge.evaluation.generate", "tuneforge.evaluation.metrics",
        "tuneforge.train.loss", "tuneforge.train.precision", "tuneforge.train.chunked_loss",
        "tuneforge.train.attention", "tuneforge.data.batching", "tuneforge.stages.lm", "tuneforge.models.load")
MODEL_FILES = (".safetensors", ".bin", ".json", ".gguf")


def code_digest() -> str:
    digest = hashlib.sha256()
    for name in CODE:
        __import__(name)
        digest.update(name.encode() + Path(sys.modules[name].__file__).read_bytes())
    return digest.hexdigest()


def model_digest(model_dir: Path) -> str | None:
    """sha256 over the directory's config and weight files (names and contents); None if it is not a directory."""
    if not model_dir.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in MODEL_FILES):
        digest.update(path.name.encode() + file_sha256(path).encode())
    return digest.hexdigest()


def base_key(run, parts: dict) -> str | None:
    """The cache key of `run`'s base scores; `parts`: what the stage evaluates (rows, prompts), JSON-able."""
    import torch
    import transformers

    from tuneforge.models import resolve_model
    from tuneforge.train.attention import per_sample_attention_applies
    from tuneforge.train.chunked_loss import chunked_loss_applies

    cfg, t = run.cfg, run.cfg.training
    model = model_digest(Path(resolve_model(cfg.model)))
    if model is None:
        return None
    settings = {"version": VERSION, "stage": cfg.stage, "eval": cfg.eval.model_dump(exclude={"before", "before_cache"}),
                "batch_size": t.batch_size, "pack_length": t.pack_length, "chunked": chunked_loss_applies(t),
                "per_sample": per_sample_attention_applies(t), "precision": run.precision,
                "device": run.device.type, "quantized_base": bool(run.method.quantized_base),
                "trust_remote_code": cfg.trust_remote_code, "torch": torch.__version__,
                "transformers": transformers.__version__, "code": code_digest(), "model": model}
    text = json.dumps([settings, parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def rows_digest(examples) -> str:
    """sha256 of tokenized rows (anything with input_ids and labels), in order."""
    from array import array

    digest = hashlib.sha256()
    for e in examples:
        ids, labels = array("q", e.input_ids), array("q", e.labels)
        digest.update(array("q", (len(ids), len(labels))).tobytes() + ids.tobytes() + labels.tobytes())
    return digest.hexdigest()


def cached_or_computed(run, compute, key_parts: dict | None) -> dict:
    """{"metrics", "details"} of the base: an earlier run's where the key matches (and eval.before_cache is on),
    else `compute()`'s, stored for the next run. On the CPU the heap a computed evaluation freed goes back to the
    system (train/heap.py) before training allocates on the holes it left."""
    key = base_key(run, key_parts) if key_parts is not None and run.cfg.eval.before_cache else None
    hit = lookup(key)
    if hit is not None:
        run.log(f"the base model's scores from an earlier run's evaluation (same model files, eval rows and "
                f"settings: {hit.get('source', {}).get('run', '?')}; eval.before_cache=false evaluates afresh)")
        return {"metrics": hit["metrics"], "details": hit.get("details") or {}, "cached": key}
    run.log("evaluating the base model ...")
    metrics, details = compute()
    if run.device.type == "cpu":
        heap.release_free_memory()
    saved = {"metrics": metrics, "details": details}
    store(key, saved, run.out)
    return saved


def _path(key: str) -> Path:
    return data_cache_dir() / DIR / f"{key}.json"


def lookup(key: str | None) -> dict | None:
    """The saved {"metrics", "details", "source"} for `key`, or None (absent or unreadable)."""
    if key is None:
        return None
    try:
        saved = json.loads(_path(key).read_text())
        return saved if isinstance(saved.get("metrics"), dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def store(key: str | None, saved: dict, run_dir: Path) -> None:
    if key is None:
        return
    try:
        _path(key).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(_path(key), {**saved, "source": {"run": str(run_dir), "time": time.time()}})
    except OSError:
        pass  # a read-only cache costs the next run the evaluation, nothing more


def clear(root: Path, older_than_days: float | None = None, now: float | None = None) -> int:
    """Remove the entries under the data cache `root` (None: all; else those not written for that many days).
    Returns how many."""
    now = time.time() if now is None else now
    removed = 0
    for path in sorted((root / DIR).glob("*.json")):
        if older_than_days is None or now - path.stat().st_mtime >= older_than_days * 86400:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
