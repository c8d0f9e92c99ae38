"""Full and partial fine-tuning: which base parameters keep requires_grad.

`freeze` trains the last N transformer blocks, named modules (e.g. lm_head, norm, embed_tokens) and
parameters matching regexes; everything else is frozen. A tied LM head is the input embedding, so
naming `lm_head` trains the shared matrix (said in the log line)."""

from __future__ import annotations

import re
from pathlib import Path

import torch.nn as nn

from tuneforge.config.schema import FreezeConfig, FullConfig
from tuneforge.errors import ConfigError
from tuneforge.methods.base import LoadBase, MethodContext

_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")


def apply_full(model: nn.Module, mcfg: FullConfig, ctx: MethodContext) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _block_index(name: str) -> int | None:
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def apply_freeze(model: nn.Module, mcfg: FreezeConfig, ctx: MethodContext) -> nn.Module:
    names = [n for n, _ in model.named_parameters()]
    blocks = sorted({i for n in names if (i := _block_index(n)) is not None})
    keep_blocks = set(blocks[len(blocks) - mcfg.last_n_layers :]) if mcfg.last_n_layers else set()
    patterns = [re.compile(p) for p in mcfg.patterns]
    for name, p in model.named_parameters():
        parts = name.split(".")
        train = (_block_index(name) in keep_blocks
                 or any(m in parts for m in (*mcfg.modules, *ctx.head_modules))
                 or any(rx.search(name) for rx in patterns))
        p.requires_grad_(train)
    if "lm_head" in mcfg.modules and model.get_output_embeddings() is not None:
        model.get_output_embeddings().weight.requires_grad_(True)  # tied: the same tensor as the embedding
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"method freeze selects no parameter (last_n_layers={mcfg.last_n_layers} of {len(blocks)} blocks, "
            f"modules={mcfg.modules}, patterns={mcfg.patterns})"
        )
    return model


def load_whole(load_base: LoadBase, run_dir: Path) -> nn.Module:
    """A full / freeze run directory is the whole model: loaded with the class its stage needs."""
    return load_base(str(run_dir))
