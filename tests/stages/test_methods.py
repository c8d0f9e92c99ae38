"""Every method, one table: it trains exactly the intended parameters, frozen ones stay bit-identical,
the loss falls on a learnable task, and what it saved reloads to the same logits."""

import re

import pytest
import torch

from tuneforge.config.load import dump_config
from tuneforge.data.batching import collate_padded
from tuneforge.data.dataset import load_examples
from tuneforge.errors import ConfigError
from tuneforge.fsutil import write_text_atomic
from tuneforge.methods import METHODS, MethodContext, check_compat
from tuneforge.models import load_model, load_tokenizer
from tuneforge.runs import load_run
from tuneforge.stages.lm import _save_model
from tuneforge.train.loop import train

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
# (method config, learning rate, predicate over the names of the parameters that must train)
CASES = {
    "full": ({"name": "full"}, 3e-3, lambda n: True),
    "freeze": ({"name": "freeze", "last_n_layers": 1, "modules": ["norm"]}, 1e-2,
               lambda n: ".layers.1." in n or n == "model.norm.weight"),
    "lora": ({"name": "lora", **LORA}, 3e-2, lambda n: "lora_A" in n or "lora_B" in n),
    "dora": ({"name": "lora", **LORA, "use_dora": True}, 3e-2, lambda n: re.search(r"lora_(A|B|magnitude)", n)),
    "rslora-gaussian": ({"name": "lora", **LORA, "use_rslora": True, "init": "gaussian"}, 3e-2, lambda n: "lora_" in n),
    "pissa": ({"name": "lora", **LORA, "init": "pissa"}, 1e-2, lambda n: "lora_" in n),
    "qlora": ({"name": "qlora", **LORA}, 3e-2, lambda n: "lora_" in n),
    "ia3": ({"name": "ia3"}, 1e-1, lambda n: "ia3_l" in n),
    "adapter": ({"name": "adapter", "size": 16}, 1e-2, lambda n: ".bottleneck_adapter." in n),
    "prefix": ({"name": "prefix", "num_virtual_tokens": 4}, 3e-1, lambda n: "prompt_encoder" in n),
    "prompt": ({"name": "prompt", "num_virtual_tokens": 4, "init_text": "answer the question"}, 1e-1,
               lambda n: "prompt_encoder" in n),
}


@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_what_it_should(case, make_config, tmp_path):
    method_cfg, lr, should_train = CASES[case]
    cfg = make_config(method=method_cfg, training__learning_rate=lr, training__max_steps=24,
                      output_dir=str(tmp_path / "run"))
    spec = METHODS[cfg.method.name]
    tok = load_tokenizer(cfg.model)
    examples, _ = load_examples(cfg, tok, cfg.data.train)
    model = load_model(cfg.model, quantize_4bit=spec.quantized_base)
    model = spec.apply(model, cfg.method, MethodContext(cfg.model))

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if should_train(n)}
    assert trainable and trainable == expected
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    result = train(model, examples, [], cfg, tmp_path / "run", "fp32", packed=spec.packing)
    losses = [h["loss"] for h in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses

    after = dict(model.named_parameters())
    for name, value in before.items():
        if name in trainable:
            continue
        assert torch.equal(after[name], value), f"frozen {name} changed"
    assert any(not torch.equal(after[n], before[n]) for n in trainable)

    write_text_atomic(tmp_path / "run" / "config.yaml", dump_config(cfg))
    _save_model(model, tok, tmp_path / "run", spec)
    reloaded, _, _ = load_run(tmp_path / "run")
    batch = collate_padded(examples[:3], pad_id=tok.pad_token_id)
    with torch.no_grad():
        want = model.eval()(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        got = reloaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    tolerance = 1e-4 if case == "pissa" else 1e-6  # PiSSA reloads as a converted rank-2r LoRA on the original base
    assert torch.allclose(want, got, atol=tolerance, rtol=0), (want - got).abs().max()


def test_compat_table_rejects_unsupported_pairs():
    for name, spec in METHODS.items():
        for stage in ("sft", "pretrain"):
            assert stage in spec.stages
            check_compat(name, stage)
    for stage in ("classify", "reward"):  # a new head on the base: no qlora/adapter/prefix support yet
        for name in ("qlora", "adapter", "prefix"):
            with pytest.raises(ConfigError, match=f"method {name!r} does not support stage {stage!r}"):
                check_compat(name, stage)
        for name in ("full", "freeze", "lora", "ia3", "prompt"):
            check_compat(name, stage)
    with pytest.raises(ConfigError, match="unknown method"):
        check_compat("nope", "sft")


def test_freeze_selecting_nothing_is_an_error(make_config):
    cfg = make_config(method={"name": "freeze", "last_n_layers": 0})
    with pytest.raises(ConfigError, match="selects no parameter"):
        METHODS["freeze"].apply(load_model(cfg.model), cfg.method, MethodContext(cfg.model))


def test_adapter_starts_at_the_base_model(make_config, tiny_model_dir):
    cfg = make_config(method={"name": "adapter", "size": 8})
    tok = load_tokenizer(cfg.model)
    examples, _ = load_examples(cfg, tok, cfg.data.train)
    batch = collate_padded(examples[:2])
    base = load_model(cfg.model)
    with torch.no_grad():
        want = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        model = METHODS["adapter"].apply(base, cfg.method, MethodContext(cfg.model))
        got = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(want, got)


def test_qlora_gradients_are_the_same_after_an_evaluation(make_config):
    """bitsandbytes 0.50.2 repacks 4-bit weights for inference on AVX512-BF16 CPUs in eval mode, and its
    repacked kernel has no autograd: gradients after an evaluation were wrong (about a tenth of the true
    norm on SmolLM2, zero in a real run). The gradients must not depend on whether we evaluated first."""
    cfg = make_config(method={"name": "qlora", **LORA, "init": "gaussian"})
    tok = load_tokenizer(cfg.model)
    examples, _ = load_examples(cfg, tok, cfg.data.train)
    from tuneforge.data.batching import collate_packed
    from tuneforge.train.loss import loss_sum

    batch = collate_packed(examples[:4])

    def grads(evaluate_first: bool) -> dict:
        torch.manual_seed(0)
        model = load_model(cfg.model, quantize_4bit=True)
        if evaluate_first:
            with torch.no_grad():
                loss_sum(model.eval(), batch)
        model = METHODS["qlora"].apply(model, cfg.method, MethodContext(cfg.model)).train()
        loss_sum(model, batch).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, after_eval = grads(False), grads(True)
    assert plain.keys() == after_eval.keys() and plain
    for name in plain:
        assert torch.allclose(plain[name], after_eval[name], atol=1e-5, rtol=1e-3), name
