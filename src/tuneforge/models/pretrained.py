"""Load a model or tokenizer from a resolved directory (or hub id), after the safety checks: safetensors
only, no remote code unless allowed, QLoRA's 4-bit base on request, a classifier head with labels.

    model = load_pretrained(path, name, labels=["neg", "pos"])     # name: what the user wrote, for errors
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tuneforge.errors import ModelError
from tuneforge.models.hub import hub_error
from tuneforge.models.placement import to_load_kwargs, weight_bytes
from tuneforge.models.safety import check_model_dir, remote_code_error


def _load_error(name: str, exc: Exception) -> ModelError:
    if "custom code" in str(exc):  # transformers refused auto_map code (it checks before importing anything)
        return remote_code_error(name, [])
    return hub_error(name, exc)


def load_tokenizer_from(path: str | Path, name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_dir(path, name, trust_remote_code)  # also the model's: train refuses before writing anything
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error(name, exc) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def to_bnb_config():
    """QLoRA's recipe: 4-bit NF4 with double quantization, bf16 compute (bitsandbytes >= 0.49 runs it on CPU)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_pretrained(path: str | Path, name: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
                    quantize_4bit: bool = False, labels: list[str] | None = None, device: torch.device | None = None,
                    may_spread: bool = False):
    """A causal LM, or with `labels` a sequence classifier (a new head is initialised from torch's current
    RNG: seed before calling to make it reproducible; a saved one is loaded). `device`: load straight onto it
    (None: the CPU); `may_spread`: one process, so a model larger than that GPU may span this machine's GPUs
    (tuneforge.models.placement)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    check_model_dir(path, name, trust_remote_code)
    on_gpu = device is not None and device.type == "cuda" and not quantize_4bit  # a 4-bit base: a quarter the size
    extra = to_load_kwargs(device, weight_bytes(path, dtype) if on_gpu else None, may_spread)
    if quantize_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError("method qlora needs bitsandbytes: pip install 'tuneforge[qlora]' (bitsandbytes>=0.49)")
        default = "auto" if device is None and torch.cuda.is_available() else "cpu"  # no device named: as before
        extra = {"quantization_config": to_bnb_config(), "device_map": extra.get("device_map", default)}
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
        raise _load_error(name, exc) from None
    if labels is not None and model.config.pad_token_id is None:
        # decoders find each row's last real token through pad_token_id; tuneforge pads with eos
        model.config.pad_token_id = load_tokenizer_from(path, name, trust_remote_code).pad_token_id
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
