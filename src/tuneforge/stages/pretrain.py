"""Continued pre-training on raw text (domain adaptation): every token is supervised, EOS after each
document, long documents split into max_length chunks (`training.overlength` defaults to split for pretrain,
so every token of the corpus trains; metrics.json's data.train says corpus_tokens and tokens used).

    tuneforge train examples/pretrain.yaml
"""

from __future__ import annotations

from tuneforge.stages.lm import run_lm as run

__all__ = ["run"]
