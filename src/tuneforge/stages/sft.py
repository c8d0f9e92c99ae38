"""Supervised fine-tuning: loss on assistant tokens only (EOS included), chat template or alpaca.

    tuneforge train examples/quickstart.yaml
"""

from __future__ import annotations

from tuneforge.stages.lm import run_lm as run

__all__ = ["run"]
