"""Padding-free packing is exact: packed loss == per-sample loss, and accumulation == a big batch."""

import torch
from transformers import AutoModelForCausalLM

import tiny
from tuneforge.data.batching import collate_packed, epoch_microbatches
from tuneforge.data.templates import IGNORE, build_sft_example
from tuneforge.train.loss import loss_sum


def _examples(tok, n=6):
    rows = tiny.toy_sft_rows(n)
    from tuneforge.data.formats import detect_format, to_messages
    from tuneforge.data.load import Record

    records = [Record(r, "t") for r in rows]
    return [build_sft_example(tok, to_messages(r, detect_format(r, "sft"))) for r in records]


def _model(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def test_targets_never_cross_samples(tiny_tokenizer):
    exs = _examples(tiny_tokenizer, 3)
    batch = collate_packed(exs)
    ends = torch.tensor([len(e.input_ids) for e in exs]).cumsum(0) - 1
    assert (batch.targets[ends] == IGNORE).all()
    assert batch.position_ids[0, ends[0] + 1] == 0
    assert batch.n_supervised == sum(e.n_supervised for e in exs)  # a sample's first token is never a target


def test_packed_loss_equals_unpacked(tiny_model_dir, tiny_tokenizer):
    model = _model(tiny_model_dir)
    exs = _examples(tiny_tokenizer)
    with torch.no_grad():
        packed = loss_sum(model, collate_packed(exs)) / collate_packed(exs).n_supervised
        sums = [loss_sum(model, collate_packed([e])) for e in exs]
        unpacked = sum(sums) / sum(collate_packed([e]).n_supervised for e in exs)
    assert torch.allclose(packed, unpacked, atol=1e-5, rtol=0), (packed.item(), unpacked.item())


def test_padded_batch_through_hf_equals_packed(tiny_model_dir, tiny_tokenizer):
    """Independent check: the HF padded-batch loss (attention mask, labels) equals our packed loss."""
    model = _model(tiny_model_dir)
    exs = _examples(tiny_tokenizer, 4)
    width = max(len(e.input_ids) for e in exs)
    ids = torch.tensor([e.input_ids + [0] * (width - len(e.input_ids)) for e in exs])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in exs])
    labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in exs])
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        batch = collate_packed(exs)
        ours = loss_sum(model, batch) / batch.n_supervised
    assert torch.allclose(hf, ours, atol=1e-5, rtol=0)


def _grads_after(model, groups):
    model.zero_grad()
    n_sup = sum(collate_packed(g).n_supervised for g in groups)
    for g in groups:
        (loss_sum(model, collate_packed(g)) / n_sup).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulation_equals_big_batch(tiny_model_dir, tiny_tokenizer):
    model = _model(tiny_model_dir)
    exs = _examples(tiny_tokenizer, 4)[:4]
    big = _grads_after(model, [exs])  # batch 4 x accum 1
    accum = _grads_after(model, [[e] for e in exs])  # batch 1 x accum 4
    assert big.keys() == accum.keys() and big
    for name in big:
        assert torch.allclose(big[name], accum[name], atol=1e-6, rtol=1e-4), name


def test_epoch_order_is_deterministic_and_complete():
    a = epoch_microbatches(10, 3, seed=1, epoch=0)
    assert a == epoch_microbatches(10, 3, seed=1, epoch=0)
    assert a != epoch_microbatches(10, 3, seed=1, epoch=1)
    assert sorted(i for mb in a for i in mb) == list(range(10))


def test_rows_respect_capacity_and_keep_every_sample(tiny_model_dir, tiny_tokenizer):
    from tuneforge.data.batching import collate, pack_rows

    exs = _examples(tiny_tokenizer, 9)
    rows = pack_rows(exs, capacity=80)
    assert sorted(id(e) for r in rows for e in r) == sorted(id(e) for e in exs)
    assert all(sum(len(e.input_ids) for e in r) <= 80 or len(r) == 1 for r in rows)
    assert 1 < len(rows) < len(exs)
    model = _model(tiny_model_dir)
    with torch.no_grad():
        one_row = collate(exs, pack_length=10_000)
        many = collate(exs, pack_length=80)
        assert len(one_row) == 1 and len(many) == len(rows)
        total = sum(b.n_supervised for b in many)
        assert total == one_row[0].n_supervised
        split = sum(loss_sum(model, b) for b in many) / total
        whole = loss_sum(model, one_row[0]) / total
    assert torch.allclose(split, whole, atol=1e-5, rtol=0)
