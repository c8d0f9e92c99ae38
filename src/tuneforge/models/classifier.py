"""A sequence classifier's forward pass, shared by the classify and reward stages, predict and the reward
scorer: encoders pool a leading [CLS] token (pad right), decoders pool the last real token (pad left).

    logits, labels = predict_ids(model, examples, tokenizer.pad_token_id, pads_left(tokenizer), 16, "fp32")
"""

from __future__ import annotations

import torch

from tuneforge.config.schema import Config
from tuneforge.data.classify import ClsBatch, ClsExample, collate_cls
from tuneforge.device import model_device, move
from tuneforge.models.load import load_model
from tuneforge.train.precision import autocast


def load_base_classifier(cfg: Config, labels: list[str], quantize_4bit: bool = False):
    """The base with a freshly initialised head, seeded with the run's seed, so `predict --base` sees the
    head the run started from."""
    torch.manual_seed(cfg.seed)
    return load_model(cfg.model, cfg.trust_remote_code, quantize_4bit=quantize_4bit, labels=labels)


def pads_left(tokenizer) -> bool:
    """Encoders pool a leading [CLS] token (pad right); decoders pool the last token (pad left)."""
    return tokenizer.cls_token_id is None


def forward_logits(model, batch: ClsBatch) -> torch.Tensor:
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if batch.token_type_ids is not None and hasattr(model.config, "type_vocab_size"):  # BERT-like only
        kwargs["token_type_ids"] = batch.token_type_ids
    return model(**kwargs).logits.float()


@torch.no_grad()
def predict_ids(model, examples: list[ClsExample], pad_id: int, left: bool, batch_size: int,
                precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n, k], labels [n]) in the order of `examples`."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for i in range(0, len(examples), batch_size):
        batch = collate_cls(examples[i : i + batch_size], pad_id, left)
        with autocast(precision):
            logits.append(forward_logits(model, move(batch, model_device(model))).cpu())
        labels.append(batch.labels)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)
