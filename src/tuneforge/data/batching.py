"""Padding-free micro-batches: the samples of a micro-batch are concatenated into one row, position ids
restart at 0 for each sample (transformers then builds a block-diagonal mask, so no attention crosses
samples), and next-token targets are shifted inside each sample, so no target crosses samples either.
No pad token is ever fed to the model, so every token counted is a real one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuneforge.data.templates import IGNORE, Example


@dataclass
class Batch:
    input_ids: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N]
    targets: torch.Tensor  # [N], the token each position must predict, IGNORE where none
    n_samples: int

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def n_supervised(self) -> int:
        return int((self.targets != IGNORE).sum())


def collate_packed(examples: list[Example]) -> Batch:
    ids: list[int] = []
    pos: list[int] = []
    targets: list[int] = []
    for ex in examples:
        n = len(ex.input_ids)
        ids += ex.input_ids
        pos += range(n)
        targets += ex.labels[1:] + [IGNORE]  # position i predicts token i+1 of the same sample
    return Batch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([pos], dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        n_samples=len(examples),
    )


def epoch_microbatches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled sample indices for one epoch, cut into micro-batches. Deterministic in (seed, epoch),
    so a resumed run walks the same order from the same position."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=g).tolist()
    return [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]


def sequential_microbatches(n_examples: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(i + batch_size, n_examples))) for i in range(0, n_examples, batch_size)]
