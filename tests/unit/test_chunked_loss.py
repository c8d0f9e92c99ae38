"""training.chunked_loss (tuneforge/train/chunked_loss.py): the head and cross-entropy a chunk of supervised rows
at a time. Proven here against the plain loss (the head's whole logits, then F.cross_entropy): the same summed loss
and the same gradients for LoRA and for full fine-tuning with a tied head, in fp32 (float rounding) and under bf16
autocast (bf16 rounding), over several chunks; the same loss without gradients (evaluation); the [positions x
vocab] log-probabilities are no longer among what autograd keeps for backward; heads it must not take (a LoRA on
the head, an architecture with a post-head transform) run the plain loss; and the loop trains with it."""

from __future__ import annotations

import copy

import pytest
import torch

import tiny
from tuneforge.data.batching import collate
from tuneforge.data.templates import Example
from tuneforge.train import chunked_loss
from tuneforge.train.loss import loss_sum


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("chunk-model")
    return tiny.build_model(path, vocab_size=96, hidden=64, layers=2)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n, prompt in ((23, 9), (17, 5), (30, 12)):
        ids = torch.randint(4, 96, (n,), generator=g).tolist()
        examples.append(Example(input_ids=ids, labels=[-100] * prompt + ids[prompt:]))
    (batch,) = collate(examples, packed=True, pack_length=512)
    return batch


def _lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(copy.deepcopy(model), config)
    with torch.no_grad():  # B starts at 0: give it values so A's gradient is not 0 either
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return peft_model


def _loss_and_grads(model, batch, chunked: bool, precision: str):
    from tuneforge.train.precision import autocast

    model.zero_grad(set_to_none=True)
    with autocast(precision):
        loss = loss_sum(model, batch, chunked)
    (loss / 11.0).backward()  # the loop divides by the step's supervised count
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_loss_and_gradients_as_the_plain_loss(base, monkeypatch, method, precision):
    model = _lora(base) if method == "lora" else copy.deepcopy(base)
    assert chunked_loss.lm_head_parts(model) is not None
    monkeypatch.setattr(chunked_loss, "CHUNK_ELEMENTS", 96 * 7)  # 7 rows a chunk: 6 chunks over 39 rows
    batch = _batch()
    plain, plain_grads = _loss_and_grads(model, batch, False, precision)
    mine, grads = _loss_and_grads(model, batch, True, precision)
    exact = precision == "fp32"
    assert mine == pytest.approx(plain, rel=1e-6 if exact else 2e-3)
    assert grads.keys() == plain_grads.keys() and grads
    fp32 = plain_grads if exact else _loss_and_grads(model, batch, False, "fp32")[1]
    for name, g in grads.items():
        ref = plain_grads[name]
        if exact:
            # fp32 summation order only: the tied embedding's gradient (lookup + head) differs by up to ~5e-7 of its
            # largest entry on an AMX Xeon (2e-6 absolute on entries near 0), so the floor scales with the gradient
            torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-6 * max(1.0, ref.abs().max().item()), msg=name)
        else:  # bf16 rounds the head's gradient before (plain: after) the loop's 1/n scale: measured <= 1.1%
            assert (g - ref).norm() <= 2e-2 * ref.norm(), name
            # and it is as near the fp32 reference as the plain bf16 loss's gradient (4-10% away, both)
            assert (g - fp32[name]).norm() <= 1.1 * (ref - fp32[name]).norm() + 1e-3 * fp32[name].norm(), name
    if method == "full":  # the tied head: its weight's gradient has the embedding's rows and the head's
        assert "model.embed_tokens.weight" in grads


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluation_loss_is_the_plain_loss(base, precision):
    from tuneforge.train.precision import autocast

    model = _lora(base)
    batch = _batch(1)
    with torch.no_grad(), autocast(precision):
        chunked, plain = float(loss_sum(model, batch, True)), float(loss_sum(model, batch, False))
    assert chunked == pytest.approx(plain, rel=1e-6 if precision == "fp32" else 2e-3)


def test_the_vocab_sized_tensors_are_not_kept_for_backward(base):
    """What autograd saves for backward, in elements: the plain loss keeps the [rows x vocab] logits and their
    log-softmax; the chunked loss keeps [rows x hidden] gradients instead."""
    model = _lora(base)
    batch = _batch()
    rows, vocab = int((batch.targets != -100).sum()), base.config.vocab_size

    def saved_vocab_sized(chunked: bool) -> int:
        count = 0

        def pack(t):
            nonlocal count
            count += int(t.dim() == 2 and t.shape == (rows, vocab))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_sum(model, batch, chunked)
        return count

    assert saved_vocab_sized(False) >= 1
    assert saved_vocab_sized(True) == 0


def test_heads_it_must_not_take_run_the_plain_loss(base):
    from peft import LoraConfig, get_peft_model

    on_head = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["lm_head", "q_proj"]))
    assert chunked_loss.lm_head_parts(on_head) is None
    other = copy.deepcopy(base)
    other.config.model_type = "gemma2"  # a soft-capped head: not in PLAIN_HEAD
    assert chunked_loss.lm_head_parts(other) is None
    batch = _batch()
    with torch.no_grad():  # and the loss still runs (the plain one)
        assert float(loss_sum(on_head, batch, True)) == pytest.approx(float(loss_sum(on_head, batch, False)))


def test_not_applied_where_the_forward_is_wrapped(make_config, tmp_path):
    assert chunked_loss.chunked_loss_applies(make_config(output_dir=str(tmp_path / "a")).training)
    for over in ({"training__compile": True}, {"training__distributed": "fsdp"}, {"training__chunked_loss": False}):
        assert not chunked_loss.chunked_loss_applies(make_config(output_dir=str(tmp_path / "b"), **over).training)
