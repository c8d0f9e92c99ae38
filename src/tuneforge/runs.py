"""Load what a run saved, for inference, merging and comparison: the base named in its config.yaml
plus the adapter (peft or bottleneck), or the whole model for full / freeze runs.

    model, tokenizer, cfg = load_run("runs/quickstart")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tuneforge.config.load import load_config
from tuneforge.config.schema import Config
from tuneforge.errors import ModelError
from tuneforge.methods import METHODS, adapter
from tuneforge.models import load_model
from tuneforge.models.load import check_model_dir


def run_config(run_dir: str | Path) -> Config:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ModelError(f"{run_dir}: not a tuneforge run (no config.yaml)")
    return load_config(run_dir / "config.yaml")


def run_labels(run_dir: str | Path) -> list[str]:
    """The label order a classify run trained with (labels.json)."""
    path = Path(run_dir) / "labels.json"
    if not path.is_file():
        raise ModelError(f"{run_dir}: no labels.json (not a finished classify run)")
    return json.loads(path.read_text())["labels"]


def load_run(run_dir: str | Path, dequantize: bool = False):
    """(model, tokenizer, cfg). `dequantize`: load a qlora run's base in full precision (for merging).
    A classify or reward run gives a sequence classifier with its trained head."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    method = METHODS[cfg.method.name]
    labels = run_labels(run_dir) if cfg.stage in ("classify", "reward") else None
    check_model_dir(run_dir, str(run_dir), cfg.trust_remote_code)  # pickles / remote code: refused, never run
    trust = cfg.trust_remote_code  # explicit: None would make transformers ask on stdin
    try:
        tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=trust)
        if cfg.method.name in ("full", "freeze"):
            auto = AutoModelForSequenceClassification if labels else AutoModelForCausalLM
            model = auto.from_pretrained(run_dir, dtype=torch.float32, use_safetensors=True, trust_remote_code=trust)
        else:
            base = load_model(cfg.model, trust, quantize_4bit=method.quantized_base and not dequantize, labels=labels)
            model = _load_adapter(base, run_dir, cfg.method.name)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{run_dir}: cannot load the run ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    model.config.use_cache = False
    return model.eval(), tokenizer, cfg


def _load_adapter(base, run_dir: Path, method: str):
    from peft import PeftModel

    if method == "adapter":
        return adapter.load(base, run_dir)
    if not (run_dir / "adapter_config.json").is_file():
        raise ModelError(f"{run_dir}: no adapter_config.json (the run did not finish?)")
    if not (run_dir / "adapter_model.safetensors").is_file():  # peft would fall back to a pickled adapter_model.bin
        raise ModelError(f"{run_dir}: no adapter_model.safetensors; tuneforge does not load pickled adapters "
                         "(adapter_model.bin can run code when loaded)")
    return PeftModel.from_pretrained(base, str(run_dir))
