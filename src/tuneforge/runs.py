"""Load what a run saved, for inference, merging and comparison: the run's method loads it (an adapter on
the base named in its config.yaml, resolved through chaining, or the whole model for full / freeze runs),
with the model class its stage needs.

    model, tokenizer, cfg = load_run("runs/quickstart")
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import ModelError
from tuneforge.methods import METHODS
from tuneforge.models.chain import run_config, run_loader
from tuneforge.models.safety import check_model_dir
from tuneforge.stage_info import stage_info

__all__ = ["load_run", "run_config", "run_labels"]


def run_labels(run_dir: str | Path) -> list[str]:
    """The label order a classify (or reward) run trained with (labels.json)."""
    path = Path(run_dir) / "labels.json"
    if not path.is_file():
        raise ModelError(f"{run_dir}: no labels.json (not a finished classify or reward run)")
    return json.loads(path.read_text())["labels"]


def load_run(run_dir: str | Path, dequantize: bool = False):
    """(model, tokenizer, cfg). `dequantize`: load a qlora run's base in full precision (for merging).
    A classify or reward run gives a sequence classifier with its trained head."""
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    method = METHODS[cfg.method.name]
    labels = run_labels(run_dir) if stage_info(cfg.stage).has_labels else None
    check_model_dir(run_dir, str(run_dir), cfg.trust_remote_code)  # pickles / remote code: refused, never run
    try:
        tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=cfg.trust_remote_code)
        load_base = run_loader(cfg, labels, quantize_4bit=method.quantized_base and not dequantize)
        model = method.load(load_base, run_dir)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{run_dir}: cannot load the run ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    model.config.use_cache = False
    return model.eval(), tokenizer, cfg
