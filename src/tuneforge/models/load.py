"""The public way to load a model: `model:` may be an alias of an embedded default, a local HF directory, a
hub id, or a finished tuneforge run (chained: tuneforge.models.chain). Path-level work lives beside it:
aliases and cache (hub.py), safety checks (safety.py), loading a resolved path (pretrained.py).

    model = load_model(cfg.model, cfg.trust_remote_code, labels=labels)
    tokenizer = load_tokenizer(cfg.model)
"""

from __future__ import annotations

import torch

from tuneforge.models.chain import resolve_model
from tuneforge.models.hub import ALIASES, Alias, tuneforge_home
from tuneforge.models.pretrained import load_pretrained, load_tokenizer_from, to_bnb_config
from tuneforge.models.safety import check_model_dir, check_safe_weights, remote_code_files

__all__ = ["ALIASES", "Alias", "check_model_dir", "check_safe_weights", "load_model", "load_tokenizer",
           "remote_code_files", "resolve_model", "to_bnb_config", "tuneforge_home"]


def load_tokenizer(name: str, trust_remote_code: bool = False):
    return load_tokenizer_from(resolve_model(name), name, trust_remote_code)


def load_model(name: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
               quantize_4bit: bool = False, labels: list[str] | None = None, device: torch.device | None = None,
               may_spread: bool = False):
    """A causal LM, or with `labels` a sequence classifier whose new head is initialised from torch's
    current RNG (seed before calling to make it reproducible). `device` / `may_spread`: see load_pretrained."""
    return load_pretrained(resolve_model(name), name, trust_remote_code, dtype, quantize_4bit, labels, device,
                           may_spread)
