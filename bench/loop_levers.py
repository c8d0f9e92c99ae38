"""The step as tuneforge's loop takes it, for bench/profile_step.py's levers: `loop` turns on what the loop turns
on around its steps (decided from a config as the loop decides it), and the small context managers the levers
combine (both of two, dropout off, the short-sample attention cap, a config with training keys changed, the loop's
step through training.compile)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def loop(model, cfg, precision: str):
    """What tuneforge's loop turns on around its steps (train/loop.py), decided from `cfg` as the loop decides it
    (defaults: frozen linear weights held in bf16, per-sample attention, the chunked loss)."""
    from functools import partial

    from tuneforge.train import frozen
    from tuneforge.train.attention import per_sample_attention, per_sample_attention_applies
    from tuneforge.train.chunked_loss import chunked_loss_applies
    from tuneforge.train.loss import loss_sum

    with frozen.held_in_bf16(model, cfg, precision, lambda _m: None), \
            per_sample_attention(model, per_sample_attention_applies(cfg.training)):
        yield model, partial(loss_sum, chunked=chunked_loss_applies(cfg.training))


@contextlib.contextmanager
def loop_compiled(model, cfg):
    """The loop's step (dropout off) as it runs with training.compile on: the forward through the compiled wrapper
    (dynamic shapes), without per-sample attention and the chunked loss (both off under compile)."""
    from bench import speed_levers as speed

    with loop(model, with_training(cfg, compile=True), "bf16") as (_m, fn), no_dropout(model), \
            speed.compiled(model) as (runner, _fn):
        yield runner, fn


def with_training(cfg, **training):
    """`cfg` with these training keys changed."""
    return cfg.model_copy(update={"training": cfg.training.model_copy(update=training)})


@contextlib.contextmanager
def both(first, second):
    with first as a, second as b:
        yield a if isinstance(a, tuple) else b


@contextlib.contextmanager
def short_path(tokens: int):
    """tuneforge.train.attention.SHORT_SAMPLE_TOKENS set to `tokens` for the duration (0: SDPA for every sample)."""
    from tuneforge.train import attention

    before, attention.SHORT_SAMPLE_TOKENS = attention.SHORT_SAMPLE_TOKENS, tokens
    try:
        yield
    finally:
        attention.SHORT_SAMPLE_TOKENS = before


@contextlib.contextmanager
def no_dropout(model):
    """Dropout modules switched to eval for the duration (what dropout 0 would cost, without a reload)."""
    drops = [m for m in model.modules() if isinstance(m, __import__("torch").nn.Dropout)]
    for m in drops:
        m.eval()
    try:
        yield
    finally:
        for m in drops:
            m.train()
