"""Evaluation's generation batches and held weights (tuneforge.evaluation.generate): batches as large as the
memory budget allows, shortest prompts first, every prompt once; under bf16 the frozen linear weights held as
their bf16 casts give the very logits and tokens that autocast gives (it casts them to the same values at every
step), and every parameter comes back as it was, the tied head included."""

import contextlib

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

import tuneforge.evaluation.generate as gen
from tuneforge.train.precision import autocast


def _lora(tiny_model_dir):
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained-looking adapter: it changes what is generated
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.5)
    return model.eval()


def _prompts(tokenizer, lengths=(9, 4, 6, 4, 2, 9, 7)):
    vocab = tokenizer.vocab_size
    return [[(7 * i + 3 * j) % (vocab - 10) + 5 for j in range(n)] for i, n in enumerate(lengths)]


def test_bf16_weights_give_autocast_logits_and_tokens(tiny_model_dir, tiny_tokenizer, monkeypatch):
    model = _lora(tiny_model_dir)
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight is embed.weight  # the tiny model ties its head: the swap must not untie it for good
    ids = torch.tensor(_prompts(tiny_tokenizer, (9, 9)))
    with torch.no_grad(), autocast("bf16"):
        want = model(input_ids=ids).logits
        with gen.bf16_weights(model, "bf16") as held:
            got = model(input_ids=ids).logits
            assert head.weight.dtype == torch.bfloat16 and embed.weight.dtype == torch.float32
    layers = sum(1 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n)
    assert held == layers > 0  # every frozen base linear and the head; no adapter layer
    assert torch.equal(got, want)
    assert head.weight is embed.weight
    for name, p in model.named_parameters():
        assert p is before[name][0] and p.dtype == torch.float32 and torch.equal(p, before[name][1]), name

    texts = gen.generate(model, tiny_tokenizer, _prompts(tiny_tokenizer), 8, "bf16")
    monkeypatch.setattr(gen, "bf16_weights", lambda m, p: contextlib.nullcontext(0))
    assert texts == gen.generate(model, tiny_tokenizer, _prompts(tiny_tokenizer), 8, "bf16")
    assert len(set(texts)) > 1  # the prompts lead to different continuations: the comparison can tell them apart


def test_nothing_held_at_fp32_or_when_trained_in_full(tiny_model_dir):
    lora = _lora(tiny_model_dir)
    with gen.bf16_weights(lora, "fp32") as fp32, gen.bf16_weights(lora, "fp16") as fp16:
        assert fp32 == fp16 == 0
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # every weight trainable: autocast caches its casts
    with gen.bf16_weights(full, "bf16") as held:
        assert held == 0


def test_nothing_held_where_the_copies_do_not_fit(tiny_model_dir, monkeypatch):
    """The bf16 copies sit beside the fp32 weights: only made where they fit in a quarter of the free memory."""
    import tuneforge.train.precision as precision

    lora = _lora(tiny_model_dir)
    copies = sum(2 * m.weight.numel() for m in precision._held_linears(lora))
    monkeypatch.setattr(precision, "free_bytes", lambda m: 4 * copies)
    with precision.bf16_weights(lora, "bf16") as held:
        assert held > 0
    monkeypatch.setattr(precision, "free_bytes", lambda m: 4 * copies - 4)
    with precision.bf16_weights(lora, "bf16") as held:
        assert held == 0 and all(p.dtype == torch.float32 for p in lora.parameters())


def test_batches_fill_the_budget_shortest_first(tiny_model_dir, tiny_tokenizer, monkeypatch):
    model = _lora(tiny_model_dir)
    prompts = _prompts(tiny_tokenizer, (30, 3, 12, 3, 50, 7, 12, 3))
    lengths = [len(p) for p in prompts]
    assert gen._groups(model, tiny_tokenizer, prompts, None, 8) == [sorted(range(8), key=lambda j: lengths[j])]
    assert [len(g) for g in gen._groups(model, tiny_tokenizer, prompts, 3, 8)] == [3, 3, 2]

    budget = 3 * gen.row_bytes(model, 12 + 8)  # three rows of 12 + 8 tokens; a 58-token row alone
    monkeypatch.setattr(gen, "KV_BUDGET", budget)
    monkeypatch.setattr(gen, "free_bytes", lambda m: 0)
    assert [len(g) for g in gen._groups(model, tiny_tokenizer, prompts, None, 8)] == [8]  # MIN_ROWS: 8 always
    monkeypatch.setattr(gen, "MIN_ROWS", 1)
    groups = gen._groups(model, tiny_tokenizer, prompts, None, 8)
    assert sorted(j for g in groups for j in g) == list(range(8))
    order = [lengths[j] for g in groups for j in g]
    assert order == sorted(order)
    for g in groups:
        assert len(g) == 1 or len(g) * gen.row_bytes(model, max(lengths[j] for j in g) + 8) <= budget
    assert [len(g) for g in groups] == [4, 2, 1, 1]  # 3 3 3 7 (four rows of 15) | 12 12 | 30 | 50
    assert gen.generate(model, tiny_tokenizer, prompts, 4, "fp32") == gen.generate(
        model, tiny_tokenizer, prompts, 4, "fp32", batch_size=1)


def test_the_budget_is_a_quarter_of_free_memory(tiny_model_dir, tiny_tokenizer, monkeypatch):
    model = _lora(tiny_model_dir)
    assert gen.free_bytes(model) > 0  # /proc/meminfo's MemAvailable here (a GPU's free memory there)
    prompts = _prompts(tiny_tokenizer, (20,) * 10)
    row = gen.row_bytes(model, 20 + 4)
    monkeypatch.setattr(gen, "MIN_ROWS", 1)
    monkeypatch.setattr(gen, "KV_BUDGET", row)
    monkeypatch.setattr(gen, "free_bytes", lambda m: 4 * 5 * row)  # a quarter of it: five rows
    assert [len(g) for g in gen._groups(model, tiny_tokenizer, prompts, None, 4)] == [5, 5]
    monkeypatch.setattr(gen, "free_bytes", lambda m: 0)  # unknown: KV_BUDGET alone
    assert [len(g) for g in gen._groups(model, tiny_tokenizer, prompts, None, 4)] == [1] * 10


def test_row_bytes_follow_the_models_shape():
    from transformers import LlamaConfig

    class Shaped:  # SmolLM2-135M's attention: 30 layers, 9 query heads, 3 key-value heads of 64
        config = LlamaConfig(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)

    assert gen.row_bytes(Shaped, 100) == 4 * 100 * (30 * 2 * 3 * 64 + 9 * 100)
    assert gen.row_bytes(Shaped, 200) > 2 * gen.row_bytes(Shaped, 100)  # attention scores grow as the square


@pytest.mark.parametrize("rows", [1, 5])
def test_on_batch_counts_every_row(tiny_model_dir, tiny_tokenizer, rows):
    seen: list[int] = []
    gen.generate(_lora(tiny_model_dir), tiny_tokenizer, _prompts(tiny_tokenizer), 2, "fp32", rows, seen.append)
    assert sum(seen) == 7 and max(seen) <= rows


@pytest.mark.parametrize("chunked", [False, True])
def test_eval_loss_is_the_same_with_held_weights(tiny_model_dir, monkeypatch, chunked):
    """evaluate_loss holds the frozen weights too (the stage's final evaluation, `tuneforge eval`, the loop's
    periodic ones): the loss is autocast's to the last bit, the chunked head's included."""
    import tuneforge.train.loss as loss_mod
    from tuneforge.data.templates import IGNORE, Example

    model = _lora(tiny_model_dir)
    rows = [Example(list(range(5, 5 + n)), [IGNORE] * 2 + list(range(7, 5 + n))) for n in (6, 9, 12)]
    held = loss_mod.evaluate_loss(model, rows, 2, "bf16", True, 64, chunked)
    monkeypatch.setattr(loss_mod, "bf16_weights", lambda m, p: contextlib.nullcontext(0))
    plain = loss_mod.evaluate_loss(model, rows, 2, "bf16", True, 64, chunked)
    assert held == plain and held["supervised_tokens"] == 4 + 7 + 10
    assert all(p.dtype == torch.float32 for p in model.parameters())
