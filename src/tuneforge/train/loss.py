"""The loss: cross-entropy summed over supervised positions only. Logits are computed just for those
positions (`logits_to_keep` with an index tensor), which skips the LM head on prompt tokens; with
`chunked` (training.chunked_loss, tuneforge/train/chunked_loss.py) a chunk of those rows at a time, so the
[positions x vocab] logits never exist whole. Callers divide by the supervised-token count of the whole
accumulated batch, so batch 1 x accum 4 equals batch 4 x accum 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tuneforge.config.schema import TrainingConfig
from tuneforge.data.batching import Batch, collate, sequential_microbatches
from tuneforge.data.templates import IGNORE, Example
from tuneforge.device import model_device, move
from tuneforge.train.attention import per_sample_attention, per_sample_attention_applies
from tuneforge.train.chunked_loss import chunked_cross_entropy, chunked_loss_applies, lm_head_parts
from tuneforge.train.precision import autocast, bf16_weights


def loss_sum(model: torch.nn.Module, batch: Batch, chunked: bool = False) -> torch.Tensor:
    if batch.attention_mask is not None:
        return _padded_loss_sum(model, batch)
    keep = (batch.targets != IGNORE).nonzero().squeeze(1)
    parts = lm_head_parts(model) if chunked else None
    if parts is not None:
        decoder, head = parts
        out = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
        loss = chunked_cross_entropy(out.last_hidden_state[0, keep], head.weight, batch.targets[keep])
        if loss is not None:
            return loss
    # use_cache=False: with a KV cache, transformers 5.23 does not build the block-diagonal mask from
    # restarted position ids and samples would attend across boundaries (DESIGN.md 4.5).
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, logits_to_keep=keep)
    return F.cross_entropy(out.logits[0].float(), batch.targets[keep], reduction="sum")


def _padded_loss_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, -batch.input_ids.shape[1] :]  # prompt tuning prepends virtual-token logits
    keep = batch.targets != IGNORE
    return F.cross_entropy(logits[keep].float(), batch.targets[keep], reduction="sum")


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, examples: list[Example], batch_size: int, precision: str,
                  packed: bool = True, pack_length: int = 512, chunked: bool = False, per_sample: bool = False) -> dict:
    """Mean loss per supervised token and perplexity over `examples`. `per_sample`: packed rows attend per sample
    (training.per_sample_attention, as training computes them). Under bf16 the frozen linear weights are held as
    their bf16 casts meanwhile (the same losses, without autocast casting them again at every forward)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = model_device(model)
    with per_sample_attention(model, per_sample and packed), bf16_weights(model, precision):
        for idx in sequential_microbatches(len(examples), batch_size):
            for batch in collate([examples[i] for i in idx], packed, pack_length):
                with autocast(precision):
                    total += float(loss_sum(model, move(batch, device), chunked))
                count += batch.n_supervised
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "supervised_tokens": count}


def evaluate_lm_loss(model: torch.nn.Module, examples: list[Example], t: TrainingConfig, precision: str,
                     packed: bool = True) -> dict:
    """evaluate_loss as the loop's evaluations compute it, from the training block `t`: its batch size and pack
    length, the chunked loss and per-sample attention where they apply. The stage's final evaluation and
    `tuneforge eval` call this too, so their losses are training's."""
    return evaluate_loss(model, examples, t.batch_size, precision, packed, t.pack_length, chunked_loss_applies(t),
                         per_sample_attention_applies(t))
