"""The one over-length rule every stage applies (training.overlength): sft / pretrain samples, classify texts,
reward and dpo pairs, RL prompts share the policy and the error message.

    action = over_length(len(ids), cfg, record.where, "pair")     # "fits" | "truncate" | "drop"
"""

from __future__ import annotations

from typing import Literal

from tuneforge.config.schema import Config
from tuneforge.errors import DataError


def over_length(n: int, cfg: Config, where: str, what: str = "sample", limit: int | None = None,
                limit_name: str = "training.max_length") -> Literal["fits", "truncate", "drop"]:
    """What training.overlength does with `n` tokens (split, pretrain's own policy, cuts what is left like
    truncate); the `error` policy raises here."""
    limit = cfg.training.max_length if limit is None else limit
    if n <= limit:
        return "fits"
    if cfg.training.overlength == "error":
        raise DataError(f"{where}: {what} has {n} tokens, over {limit_name}={limit} "
                        "(set training.overlength to truncate or drop, or raise training.max_length)")
    return "drop" if cfg.training.overlength == "drop" else "truncate"
