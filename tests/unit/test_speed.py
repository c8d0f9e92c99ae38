"""Step-speed levers keep parity (bench/speed_levers.py): frozen linear weights held in bf16 give the same loss
and gradients as bf16 autocast over the fp32 weights (bit for bit), stay close to the fp32 reference, and leave
the model exactly as it was afterwards (so save / merge / export see the fp32 weights)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tuneforge.data.batching import collate
from tuneforge.data.templates import Example
from tuneforge.train.loss import loss_sum

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from speed_levers import frozen_in_bf16  # noqa: E402


def _lora_model(tiny_model_dir, **lora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             **lora))
    with torch.no_grad():  # B starts at 0: give the adapter a visible effect
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n in (23, 17, 31):
        ids = torch.randint(4, vocab, (n,), generator=g).tolist()
        examples.append(Example(input_ids=ids, labels=[-100] * 5 + ids[5:]))
    return collate(examples, True, 512)[0]


def _loss_and_grads(model, batch, precision: str):
    model.zero_grad(set_to_none=True)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    with ctx:
        loss = loss_sum(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


@pytest.mark.parametrize("head", [False, True])
def test_bf16_frozen_weights_match_autocast_bit_for_bit(tiny_model_dir, head):
    model = _lora_model(tiny_model_dir)
    batch = _batch(model.config.vocab_size)
    ref_loss, ref_grads = _loss_and_grads(model, batch, "bf16")
    fp32_loss, _ = _loss_and_grads(model, batch, "fp32")
    with frozen_in_bf16(model, head=head) as lever:
        assert lever.count > 0
        loss, grads = _loss_and_grads(model, batch, "bf16")
    assert loss == ref_loss  # the same rounding autocast applies, done once
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        assert torch.equal(grads[n], ref_grads[n]), n
    assert abs(loss - fp32_loss) <= 0.01 * abs(fp32_loss)  # and close to the fp32 reference


def test_bf16_frozen_weights_only_inside_and_restored_exactly(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    before = {n: (p, p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}
    base = model.get_base_model()
    with frozen_in_bf16(model, head=True) as lever:
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
        assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
        assert all(dtypes[n] == torch.float32 for n in dtypes if "lora_" in n or "norm" in n)  # trainable, norms
        assert dtypes["base_model.model.model.embed_tokens.weight"] == torch.float32  # the residual stream's source
        assert base.lm_head.weight.dtype == torch.bfloat16 and base.lm_head.weight is not base.model.embed_tokens.weight
        with lever.paused():  # e.g. the loop's periodic evaluation
            assert all(p.dtype == torch.float32 for p in model.parameters())
            assert base.lm_head.weight is base.model.embed_tokens.weight
        assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for n, (p, ptr, value) in before.items():
        assert after[n] is p and p.data_ptr() == ptr and torch.equal(p, value), n  # the same fp32 tensor
    assert base.lm_head.weight is base.model.embed_tokens.weight  # tied again


def test_dora_and_trainable_weights_are_left_fp32(tiny_model_dir):
    model = _lora_model(tiny_model_dir, use_dora=True)
    batch = _batch(model.config.vocab_size)
    ref_loss, _ = _loss_and_grads(model, batch, "bf16")
    with frozen_in_bf16(model) as lever:
        assert lever.count == 0  # every frozen linear is a DoRA base layer: nothing to swap
        assert _loss_and_grads(model, batch, "bf16")[0] == ref_loss
    full = _lora_model(tiny_model_dir)
    for p in full.parameters():
        p.requires_grad_(True)  # full fine-tuning: nothing frozen, nothing swapped
    with frozen_in_bf16(full) as lever:
        assert lever.count == 0



def test_packed_attention_is_per_sample_attention(tiny_model_dir, monkeypatch):
    """Per-sample SDPA over a packed row: the loss and gradients of the packed row equal the samples' own (fp32),
    one SDPA call per sample and layer (not the row's N x N), a padded batch is untouched, SDPA after."""
    import transformers.integrations.sdpa_attention as sdpa_module
    from speed_levers import packed_attention

    model = _lora_model(tiny_model_dir)
    assert model.config._attn_implementation == "sdpa"
    batch = _batch(model.config.vocab_size)
    lens = [23, 17, 31]
    g = torch.Generator().manual_seed(0)
    singles = []
    for n in lens:  # the same samples _batch packs, one per forward
        ids = torch.randint(4, model.config.vocab_size, (n,), generator=g).tolist()
        singles.append(collate([Example(input_ids=ids, labels=[-100] * 5 + ids[5:])], True, 512)[0])
    model.zero_grad(set_to_none=True)
    sum(loss_sum(model, b) for b in singles).backward()
    per_sample = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    per_sample_loss = float(sum(loss_sum(model, b) for b in singles).detach())
    padded = collate(_examples_of(singles), False, 512)[0]
    padded_loss = float(loss_sum(model, padded).detach())

    calls: list[int] = []
    inner = sdpa_module.sdpa_attention_forward
    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward", lambda m, q, *a, **k: calls.append(q.shape[2]) or
                        inner(m, q, *a, **k))
    with packed_attention(model) as on:
        assert on
        loss, grads = _loss_and_grads(model, batch, "fp32")
        assert calls == sorted(lens, reverse=True) * model.config.num_hidden_layers  # each sample alone, longest first
        calls.clear()
        assert float(loss_sum(model, padded).detach()) == pytest.approx(padded_loss, rel=1e-6)
        assert calls == [padded.input_ids.shape[1]] * model.config.num_hidden_layers  # padded rows: plain SDPA
    assert model.config._attn_implementation == "sdpa"
    assert loss == pytest.approx(per_sample_loss, rel=1e-5)
    for n in grads:
        torch.testing.assert_close(grads[n], per_sample[n], rtol=1e-4, atol=1e-6)


def _examples_of(batches) -> list[Example]:
    """Back from one-sample packed batches to examples (input ids; labels rebuilt from the shifted targets)."""
    out = []
    for b in batches:
        ids = b.input_ids[0].tolist()
        out.append(Example(input_ids=ids, labels=[-100] + b.targets[:-1].tolist()))
    return out

def test_precision_auto_takes_bf16_on_the_cpu_only_where_its_matmuls_keep_up(monkeypatch):
    """precision auto on the CPU: bf16 autocast needs the flags AND bf16 matmuls at least as fast as fp32 (on a
    Xeon without AMX they ran at 0.6x and a LoRA step 1.65x slower than fp32); the probe runs on one thread
    and gives the process its threads back."""
    from tuneforge.train import precision

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ratio = precision.bf16_matmul_speedup(rows=16, reps=1)
        assert ratio > 0 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(precision.Path, "read_text", lambda _self: "flags : fpu avx512f avx512_bf16 amx_bf16")
    for speedup, expected in ((0.6, "fp32"), (1.0, "bf16"), (4.0, "bf16")):
        monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda s=speedup: s)
        precision.cpu_has_bf16.cache_clear()
        assert precision.resolve_precision("auto", torch.device("cpu")) == expected
    monkeypatch.setattr(precision.Path, "read_text", lambda _self: "flags : fpu avx512f")
    precision.cpu_has_bf16.cache_clear()
    assert precision.resolve_precision("auto", torch.device("cpu")) == "fp32"  # no bf16 flags: never probed
    monkeypatch.undo()
    precision.cpu_has_bf16.cache_clear()
