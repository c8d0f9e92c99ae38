"""The initial policy as the RL stages' reference: a copy of the trainable weights taken before training,
swapped in for the length of a `with` block. ppo's KL penalty, KL stop and reported KL and the before / after
evaluation of ppo and grpo measure against it, whatever the method: for an adapter that starts as the identity
it is the base (as the adapter disabled would be); for one that does not, it is still the initial policy (LoRA
with PiSSA init moves the top singular directions into the adapter, so `disable_adapter()` is the residual,
not the base).

    reference = InitialPolicy(model)     # before training, and before a resume loads a checkpoint's weights
    with reference():                    # `model` scores as the initial policy inside the block
        ref_logits = model(...).logits
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every trainable tensor, by parameter name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def put_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` into the model's parameters of those names, in place (the optimizer keeps its tensors)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


@contextlib.contextmanager
def weights_swapped(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """`model` with `weights` inside the block, its own weights back after it."""
    current = {name: p.detach().clone() for name, p in model.named_parameters() if name in weights}
    put_weights(model, weights)
    try:
        yield
    finally:
        put_weights(model, current)


class InitialPolicy:
    """A zero-argument context-manager factory (what rl.policy_eval's `reference=` takes): inside, the model
    is the policy as it was when this was made."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.weights = trainable_weights(model)

    def __call__(self) -> contextlib.AbstractContextManager:
        return weights_swapped(self.model, self.weights)
