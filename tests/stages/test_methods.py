"""Method variants the matrix (test_matrix.py: every method x stage pair, its defaults) does not train, each
through the real sft stage: it trains exactly the intended parameters, frozen ones stay bit-identical, the
loss falls on a learnable task, and what it saved reloads to the same logits. Plus the method table's own
rules (compatibility, empty selections, an adapter starting at the base, QLoRA gradients)."""

import json
import re

import pytest
import stage_kit as kit
import torch

from tuneforge.data.batching import collate_padded
from tuneforge.data.dataset import load_examples
from tuneforge.errors import ConfigError
from tuneforge.methods import METHODS, MethodContext, check_compat
from tuneforge.models import load_model, load_tokenizer
from tuneforge.runs import load_run

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
# (method config, learning rate, predicate over the names of the parameters that must train)
CASES = {
    "freeze-modules": ({"name": "freeze", "last_n_layers": 1, "modules": ["norm"]}, 1e-2,
                       lambda n: ".layers.1." in n or n == "model.norm.weight"),
    "dora": ({"name": "lora", **LORA, "use_dora": True}, 3e-2, lambda n: re.search(r"lora_(A|B|magnitude)", n)),
    "rslora-gaussian": ({"name": "lora", **LORA, "use_rslora": True, "init": "gaussian"}, 3e-2, lambda n: "lora_" in n),
    "pissa": ({"name": "lora", **LORA, "init": "pissa"}, 1e-2, lambda n: "lora_" in n),
    "prompt-init-text": ({"name": "prompt", "num_virtual_tokens": 4, "init_text": "answer the question"}, 1e-1,
                         lambda n: "prompt_encoder" in n),
}


@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_what_it_should(case, make_config, tmp_path):
    method_cfg, lr, should_train = CASES[case]
    cfg = make_config(method=method_cfg, training__learning_rate=lr, training__max_steps=16, training__report_to=[],
                      eval__generate_samples=0, output_dir=str(tmp_path / "run"))
    run = kit.run_captured(cfg)
    model = run.model

    trainable = run.trainable()
    assert trainable and trainable == {n for n, _ in model.named_parameters() if should_train(n)}
    history = [json.loads(x) for x in (run.out / "train_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses

    after = dict(model.named_parameters())
    for name, value in run.start.items():
        if name not in trainable:
            assert torch.equal(after[name], value), f"frozen {name} changed"
    assert all(not torch.equal(after[n], run.start[n]) for n in trainable)

    reloaded, tok, _ = load_run(run.out)
    examples, _ = load_examples(cfg, tok, cfg.data.train)
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
