"""Model configs for `tuneforge plan`: the shipped architectures (offline JSON) or a local directory,
and the weight-free model built from one on the meta device.

    python -c "from tuneforge.plan.archs import load_arch_config; print(load_arch_config('llama-2-7b'))"
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
)

from tuneforge.errors import UserError

# JSON file stem -> accepted names (matched case-insensitively), hub ids included so a copied id works.
ARCHS: dict[str, tuple[str, ...]] = {
    "llama-2-7b": ("llama2-7b", "llama-2-7b-hf", "meta-llama/llama-2-7b-hf"),
    "llama-3-8b": ("llama3-8b", "meta-llama-3-8b", "meta-llama/meta-llama-3-8b"),
    "mistral-7b-v0.1": ("mistral-7b", "mistralai/mistral-7b-v0.1"),
    "qwen2.5-7b": ("qwen2.5", "qwen/qwen2.5-7b"),
    "smollm2-135m": ("smollm2-135m-instruct", "huggingfacetb/smollm2-135m", "huggingfacetb/smollm2-135m-instruct"),
    "smollm2-360m": ("smollm2-360m-instruct", "huggingfacetb/smollm2-360m", "huggingfacetb/smollm2-360m-instruct"),
    "smollm2-1.7b": ("smollm2-1.7b-instruct", "huggingfacetb/smollm2-1.7b", "huggingfacetb/smollm2-1.7b-instruct"),
    "distilbert-base-uncased": ("distilbert", "distilbert/distilbert-base-uncased"),
    "all-minilm-l6-v2": ("minilm-l6", "sentence-transformers/all-minilm-l6-v2"),
}


def known_models() -> list[str]:
    return sorted(ARCHS)


def _arch_stem(name: str) -> str | None:
    key = name.strip().lower()
    for stem, aliases in ARCHS.items():
        if key == stem or key in aliases:
            return stem
    return None


def _config_from_dict(raw: dict, where: str) -> PretrainedConfig:
    values = {k: v for k, v in raw.items() if not k.startswith("_")}  # "_source" notes are ours
    try:
        return AutoConfig.for_model(values.pop("model_type"), **values)
    except (KeyError, ValueError) as exc:  # no or unknown model_type (e.g. remote-code models)
        raise UserError(f"{where}: cannot build a transformers config ({type(exc).__name__}: {exc})") from None


def load_arch_config(name: str) -> PretrainedConfig:
    """A shipped architecture by name or alias, or a local directory holding config.json. No weights."""
    stem = _arch_stem(name)
    if stem is not None:
        text = resources.files("tuneforge.plan").joinpath("archs", f"{stem}.json").read_text()
        config = _config_from_dict(json.loads(text), f"archs/{stem}.json")
        config.name_or_path = stem
        return config
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        # Read the file ourselves: AutoConfig.from_pretrained would try trust_remote_code paths and the hub.
        config = _config_from_dict(json.loads((path / "config.json").read_text()), str(path / "config.json"))
        config.name_or_path = str(path)
        return config
    where = f"directory {name!r} has no config.json" if path.is_dir() else f"unknown model {name!r}"
    raise UserError(
        f"{where}.\n  known models: {', '.join(known_models())} (also: smollm2-135m-instruct, distilbert, "
        "llama2-7b, mistral-7b)\n  or pass a local directory that holds a Hugging Face config.json"
    )


@dataclass(frozen=True)
class MetaModel:
    """A model with meta tensors plus the facts the estimates need about its layout."""

    model: nn.Module
    task: str  # peft task type: CAUSAL_LM or SEQ_CLS
    blocks: nn.ModuleList  # the repeated transformer blocks


def is_causal_lm(config: PretrainedConfig) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def find_blocks(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The first ModuleList with one entry per layer (`model.layers`, `transformer.layer`, `h`, ...)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise UserError(f"cannot find the {n_layers} transformer blocks in {type(model).__name__}")


def build_meta_model(config: PretrainedConfig, classifier: bool | None = None) -> MetaModel:
    """Instantiate on the meta device: shapes and parameter counts without allocating any weight.

    `classifier` None: decoders get their causal-LM class, encoders (e.g. DistilBERT) a sequence-classification
    head; True gives any model a classification head (a classify / reward stage).
    """
    causal = is_causal_lm(config) if classifier is None else not classifier
    cls = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = cls.from_config(config)
    return MetaModel(model=model, task="CAUSAL_LM" if causal else "SEQ_CLS",
                     blocks=find_blocks(model, config.num_hidden_layers))
