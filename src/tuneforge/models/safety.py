"""Checks before transformers opens a local model directory: weights only in pickle format (unpickling can
run any code) and Python files the model or tokenizer would make transformers import (remote code) are
ModelErrors, so nothing runs and nothing is written first.

    check_model_dir(path, name, trust_remote_code=False)
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import ModelError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_safe_weights(path: Path, name: str) -> None:
    """Refuse a model directory whose weights exist only as pickles: unpickling can run any code."""
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        raise ModelError(
            f"model {name!r}: the weights are only in pickle format ({', '.join(pickles[:3])}); loading a pickle "
            "can run arbitrary code, so tuneforge loads safetensors only.\n  if you trust the file, convert it "
            "once: from_pretrained(..., use_safetensors=False) then save_pretrained(..., safe_serialization=True)"
        )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or broken: transformers reports it when it loads the file
    return data if isinstance(data, dict) else {}


def _code_files(refs) -> list[str]:
    """auto_map class references ("modeling_x.XModel", "repo--modeling_x.XModel", [slow, fast]) -> files."""
    out: list[str] = []
    for ref in refs if isinstance(refs, list | tuple) else [refs]:
        if isinstance(ref, str) and "." in ref:
            out.append(ref.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return out


def remote_code_files(path: Path) -> list[str]:
    """The Python files a local model directory would make transformers import: `auto_map` entries of
    config.json (when transformers has no built-in class for its model_type) and of tokenizer_config.json
    (when its tokenizer_class is not a transformers class)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config, tok = _read_json(path / "config.json"), _read_json(path / "tokenizer_config.json")
    files: list[str] = []
    auto_map = config.get("auto_map")
    if isinstance(auto_map, dict) and auto_map and config.get("model_type") not in CONFIG_MAPPING:
        for refs in auto_map.values():
            files += _code_files(refs)
    tok_map = tok.get("auto_map")
    tok_refs = tok_map.get("AutoTokenizer") if isinstance(tok_map, dict) else tok_map
    tok_class = tok.get("tokenizer_class")
    if tok_refs and not (isinstance(tok_class, str) and hasattr(transformers, tok_class)):
        files += _code_files(tok_refs)
    return sorted(set(files))


def remote_code_error(name: str, files: list[str]) -> ModelError:
    what = f" ({', '.join(files)})" if files else ""
    return ModelError(
        f"model {name!r} needs remote code{what}: its config maps the model or tokenizer classes to Python code "
        "shipped with the model, and tuneforge does not run such code unless the config allows it.\n"
        "  read that code, then set key 'trust_remote_code: true' (or pass trust_remote_code=true)"
    )


def check_model_dir(path: str | Path, name: str, trust_remote_code: bool) -> None:
    """Before transformers opens a local model directory: pickle-only weights and code it would import
    (without trust_remote_code) are ModelErrors, so nothing runs and nothing is written first."""
    path = Path(path)
    if not path.is_dir():
        return  # a hub id: transformers checks remote code itself, and we ask it for safetensors only
    check_safe_weights(path, name)
    if not trust_remote_code and (files := remote_code_files(path)):
        raise remote_code_error(name, files)
