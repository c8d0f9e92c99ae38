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


@pytest.mark.parametrize("scaling", [None, 0.3])
def test_short_sample_attention_is_causal_grouped_attention(scaling):
    """The plain-ops path is SDPA's causal attention (grouped-query heads, the module's scaling), forward and
    backward, to float precision (fp64 here: the maths, not the rounding)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 13, 8, generator=g, dtype=torch.float64).transpose(1, 2).contiguous()
               .transpose(1, 2).requires_grad_() for h in (6, 2, 2))  # (b, heads, L, d) strided as the model's
    grads = []
    for fn in (lambda: attention._short_sample_attention(q, k, v, scaling, torch.float64),
               lambda: torch.nn.functional.scaled_dot_product_attention(
                   q, k, v, is_causal=True, enable_gqa=True, scale=scaling).transpose(1, 2)):
        out = fn()
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([out.detach().clone()] + [t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _packed_bf16(tiny_model_dir, monkeypatch, short_tokens: int, precision: str):
    """Loss and gradients of a packed row of three samples through per-sample attention, and the sample lengths
    that took the plain-ops path."""
    from test_speed import _batch, _lora_model, _loss_and_grads

    taken: list[int] = []
    inner = attention._short_sample_attention
    monkeypatch.setattr(attention, "_short_sample_attention", lambda q, *a: taken.append(q.shape[2]) or inner(q, *a))
    monkeypatch.setattr(attention, "SHORT_SAMPLE_TOKENS", short_tokens)
    model = _lora_model(tiny_model_dir)
    with attention.per_sample_attention(model):
        loss, grads = _loss_and_grads(model, _batch(model.config.vocab_size), precision)
    return loss, grads, taken


def test_bf16_short_samples_take_plain_ops_as_accurate_as_sdpa(tiny_model_dir, monkeypatch):
    """Under bf16 autocast, samples up to SHORT_SAMPLE_TOKENS take the plain-ops path (longer ones and fp32 rows
    keep SDPA); against the fp32 reference its loss and gradients are as close as SDPA's bf16 kernel is."""
    ref_loss, ref_grads, taken = _packed_bf16(tiny_model_dir, monkeypatch, 512, "fp32")
    assert taken == []  # fp32: SDPA
    sdpa_loss, sdpa_grads, taken = _packed_bf16(tiny_model_dir, monkeypatch, 0, "bf16")
    assert taken == []
    short_loss, short_grads, taken = _packed_bf16(tiny_model_dir, monkeypatch, 512, "bf16")
    assert sorted(set(taken)) == [17, 23, 31] and len(taken) == 3 * 2  # every sample, both layers
    _, _, taken = _packed_bf16(tiny_model_dir, monkeypatch, 23, "bf16")
    assert sorted(set(taken)) == [17, 23]  # the 31-token sample went to SDPA
    assert abs(short_loss - ref_loss) <= 2 * abs(sdpa_loss - ref_loss) + 1e-3 * abs(ref_loss)
    for name, ref in ref_grads.items():
        scale = ref.abs().max()
        err_short = float((short_grads[name] - ref).abs().max() / scale)
        err_sdpa = float((sdpa_grads[name] - ref).abs().max() / scale)
        assert err_short <= 2 * err_sdpa + 2e-2, name


def test_sliding_window_layers_keep_their_window_per_sample():
    """A sliding-window model (Mistral, window 5): each packed sample attends as it would alone, within the window
    (a sample longer than it too), and an unpacked forward inside the switch equals one outside it."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=5,
                           attn_implementation="sdpa")
    model = MistralForCausalLM(config).eval()
    lens = [9, 4, 7]
    ids = torch.randint(0, 64, (1, sum(lens)))
    positions = torch.cat([torch.arange(n) for n in lens])[None]
    with torch.no_grad():
        alone = torch.cat([model(input_ids=part).logits for part in ids.split(lens, dim=1)], dim=1)
        whole = model(input_ids=ids).logits
        with attention.per_sample_attention(model):
            packed = model(input_ids=ids, position_ids=positions).logits
            unpacked = model(input_ids=ids).logits
        causal_only = MistralForCausalLM(MistralConfig(**{**config.to_dict(), "sliding_window": None})).eval()
        causal_only.load_state_dict(model.state_dict())
        no_window = torch.cat([causal_only(input_ids=p).logits for p in ids.split(lens, dim=1)], dim=1)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unpacked, whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone, no_window, atol=1e-4)  # the window matters for these samples


@pytest.mark.parametrize("scaling", [None, 0.3])
def test_a_row_of_short_samples_is_each_sample_alone_bit_for_bit(scaling):
    """A bf16 packed row whose samples are all short is cast and scaled once and split once: outputs and
    gradients are bit for bit those of each sample through the plain-ops path on its own slice."""
    g = torch.Generator().manual_seed(0)
    lens = [5, 9, 3]
    q, k, v = (torch.randn(1, h, sum(lens), 8, generator=g).requires_grad_() for h in (6, 2, 2))
    positions = torch.cat([torch.arange(n) for n in lens])[None]
    module = torch.nn.Module()
    module.is_causal = True
    results = []
    for whole in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if whole:
                out = attention._packed_sdpa(module, q, k, v, None, scaling=scaling, position_ids=positions)[0]
            else:
                bounds = [0, 5, 14, 17]
                out = torch.cat([attention._short_sample_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e],
                                                                   scaling, torch.bfloat16)
                                 for s, e in zip(bounds, bounds[1:], strict=False)], dim=1)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach().clone()] + [t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    assert results[0][0].dtype == torch.bfloat16
    for got, want in zip(*results, strict=True):
        assert torch.equal(got, want)
