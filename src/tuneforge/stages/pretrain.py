"""Continued pre-training on raw text (domain adaptation): every token is supervised, EOS after each
document, long documents split into max_length chunks with `training.overlength=split`.

    tuneforge train examples/pretrain.yaml
"""

from __future__ import annotations

from tuneforge.stages.lm import run_lm as run

__all__ = ["run"]
