"""training.per_sample_attention (tuneforge/train/attention.py): while the loop trains (and its evaluations run),
packed rows attend per sample instead of over the row's masked N x N; the same losses as the masked attention (fp32,
1e-5), the model on SDPA again afterwards, nothing switched with the key off, under compile, or on a model that is
not on SDPA. That per-sample attention equals each sample's own forward (loss and gradients) is
tests/unit/test_speed.py's test_packed_attention_is_per_sample_attention (the bench lever is this function)."""

from __future__ import annotations

import pytest
import torch

import tiny
from tuneforge.train import attention


def _trained(make_config, tmp_path, monkeypatch, on: bool) -> tuple[list[float], dict, list[int]]:
    calls: list[int] = []
    inner = attention._packed_sdpa
    monkeypatch.setattr(attention, "_packed_sdpa", lambda m, q, *a, **k: calls.append(q.shape[2]) or
                        inner(m, q, *a, **k))
    cfg = make_config(training__max_steps=5, training__per_sample_attention=on, training__learning_rate=1e-2,
                      training__eval_steps=5, output_dir=str(tmp_path / f"run-{on}"))
    model, result, _ = tiny.train_checked(cfg)
    assert model.config._attn_implementation == "sdpa"  # switched back when training ended
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return [h["loss"] for h in result.history], trained, calls


def test_the_loop_attends_per_sample_and_trains_the_same(make_config, tmp_path, monkeypatch):
    on_losses, on_weights, on_calls = _trained(make_config, tmp_path, monkeypatch, True)
    off_losses, off_weights, off_calls = _trained(make_config, tmp_path, monkeypatch, False)
    assert on_calls and not off_calls  # every layer of every packed forward went through it, and none without
    assert len(on_losses) == 5 and on_losses == pytest.approx(off_losses, rel=1e-5)
    assert all(v == v for v in on_losses) and on_losses[-1] < on_losses[0]  # finite, and it trains
    for name, weight in on_weights.items():  # Adam magnifies float noise where a gradient is near 0 (as compile's test)
        torch.testing.assert_close(weight, off_weights[name], rtol=1e-3, atol=2e-4)


def test_the_switch_is_scoped_and_nests(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    with attention.per_sample_attention(model) as outer:
        assert outer and model.config._attn_implementation == attention.PACKED_SDPA
        with attention.per_sample_attention(model) as inner:  # e.g. an evaluation inside training
            assert inner
        assert model.config._attn_implementation == attention.PACKED_SDPA  # the inner one left it to the outer
    assert model.config._attn_implementation == "sdpa"
    with attention.per_sample_attention(model, on=False) as off:
        assert not off and model.config._attn_implementation == "sdpa"
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    with attention.per_sample_attention(eager) as switched:
        assert not switched and eager.config._attn_implementation == "eager"  # another implementation: left alone


def test_other_objectives_keep_their_attention(make_config, tmp_path, monkeypatch):
    """A stage that brings its own objective (classify, reward: padded rows) trains with the model's attention."""
    from tuneforge.train import loop

    seen: list[str] = []
    monkeypatch.setattr(loop, "_train", lambda model, *a, **k: seen.append(model.config._attn_implementation))
    cfg = make_config(output_dir=str(tmp_path / "run"))
    model = tiny_causal_lm(cfg.model)
    loop.train(model, [], [], cfg, tmp_path, "fp32", objective=loop.lm_objective(cfg, "fp32", True))
    loop.train(model, [], [], cfg, tmp_path, "fp32")
    assert seen == ["sdpa", attention.PACKED_SDPA]


def tiny_causal_lm(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")


def test_compile_keeps_the_masked_attention(make_config):
    assert attention.per_sample_attention_applies(make_config().training)
    assert not attention.per_sample_attention_applies(make_config(training__compile=True).training)
    assert not attention.per_sample_attention_applies(make_config(training__per_sample_attention=False).training)
