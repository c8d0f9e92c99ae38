"""`tuneforge plan` under training.bf16_stream: the activation formula with bf16 hidden states matches the tensors
autograd keeps when every frozen weight is held in bf16 (LoRA, with and without the chunked loss's caller), the
weights are 2 B each but the adapters', and the config's key reaches the estimate; methods it does not apply to
(full, prefix, prompt, fp32) are planned as without it."""

from __future__ import annotations

import json

import pytest
from test_plan import _saved_tensor_bytes
from transformers import LlamaConfig

from tuneforge import cli
from tuneforge.plan.estimate import estimate

CONFIG = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True)


def test_activation_formula_matches_saved_tensors_on_a_bf16_stream():
    config, batch, seq = LlamaConfig(**CONFIG), 2, 64
    on = estimate(config, "lora", batch_size=batch, seq_len=seq, precision="bf16-mixed", bf16_stream=True,
                  chunked_loss=False, dropout=0.0)
    off = estimate(config, "lora", batch_size=batch, seq_len=seq, precision="bf16-mixed", chunked_loss=False,
                   dropout=0.0)
    predicted = on["bytes"]["activations_layers"] + batch * seq * 4 * 128  # + the fp32 log-softmax; no head copy
    measured = _saved_tensor_bytes(config, "lora", "bf16-mixed", batch, seq, dropout=0.0, stream=True)
    assert predicted == pytest.approx(measured, rel=0.1)
    held = _saved_tensor_bytes(config, "lora", "bf16-mixed", batch, seq, dropout=0.0, held=True)
    assert measured < held and on["bytes"]["activations"] < off["bytes"]["activations"]
    assert on["settings"]["bf16_stream"] is True and off["settings"]["bf16_stream"] is False


def test_every_frozen_weight_is_two_bytes_and_other_methods_are_unchanged():
    def b(method, precision="bf16-mixed", **kw):
        return estimate("smollm2-135m", method, batch_size=1, seq_len=64, precision=precision, **kw)

    on, off = b("lora", bf16_stream=True), b("lora")
    rest = on["base_params"] - 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)  # embeddings and norms
    assert off["bytes"]["weights"] - on["bytes"]["weights"] == 2 * rest
    assert b("lora", bf16_stream=True, frozen_bf16=False)["bytes"] == on["bytes"]  # the stream holds the linears
    for method, precision in (("lora", "fp32"), ("full", "bf16-mixed"), ("prefix", "bf16-mixed"),
                              ("prompt", "bf16-mixed")):
        with_key = b(method, precision, bf16_stream=True)
        assert with_key["bytes"] == b(method, precision)["bytes"] and with_key["settings"]["bf16_stream"] is False


def test_the_configs_key_reaches_the_plan(capsys):
    for key in ("true", "false"):
        assert cli.main(["plan", "model=smollm2-135m", "method.name=lora", "--precision", "bf16-mixed",
                         f"training.bf16_stream={key}", "--json"]) == 0
        row = json.loads(capsys.readouterr().out)[0]
        assert row["settings"]["bf16_stream"] is (key == "true")
