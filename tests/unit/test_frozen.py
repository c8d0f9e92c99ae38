"""training.frozen_bf16 (tuneforge/train/frozen.py): under bf16 autocast the frozen linear weights are held in
bf16 while the loop trains. Proven here: the run is bit for bit the run that kept them in fp32 (every step's loss,
every trained weight), the weights were bf16 while it trained and are the loaded fp32 ones again after, nothing
is held in fp32 runs, a weight that differs from its file stays fp32, a file changed under the run is an error
naming it, and an encoder loaded under a task head finds its weights under the bare names it was saved with."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny
from tuneforge.errors import ModelError
from tuneforge.train import frozen


def _train(cfg, precision: str, before_train=None):
    """The stage skeleton's setup and tuneforge's loop on `cfg` at `precision`; returns (model, result, log
    lines, the weights before training, the dtypes of the held weights when the loop ended)."""
    import tuneforge.stages.skeleton as skeleton
    from tuneforge.train.loop import train

    torch.manual_seed(0)
    run = skeleton.begin(cfg, lambda _m: None)
    data = skeleton.load_data(run)
    out = skeleton.open_output(run)
    model, _ = skeleton.apply_method(run, skeleton.load_base(run))
    if before_train:
        before_train(model)
    loaded = {n: p.detach().clone() for n, p in model.named_parameters()}  # frozen as loaded, trainable at start
    seen: list[torch.dtype] = []
    real_restore = frozen.restore

    def spy(held):
        seen.extend(h.param.dtype for h in held)
        real_restore(held)

    lines: list[str] = []
    frozen.restore = spy
    try:
        result = train(model, data.train, [], cfg, out, precision, log=lines.append)
    finally:
        frozen.restore = real_restore
    return model, result, lines, loaded, seen


def _config(make_config, tmp_path, name: str, **overrides):
    return make_config(**{"output_dir": str(tmp_path / name), "training__max_steps": 8,
                          "eval__generate_samples": 0, "eval__before": False, **overrides})


def test_training_is_bit_for_bit_and_the_base_comes_back_in_fp32(make_config, tmp_path):
    held_run = _train(_config(make_config, tmp_path, "held"), "bf16")
    fp32_run = _train(_config(make_config, tmp_path, "fp32-copy", training__frozen_bf16=False), "bf16")
    (model, result, lines, loaded, seen), (model2, result2, lines2, _, seen2) = held_run, fp32_run
    losses = [h["loss"] for h in result.history]
    assert losses == [h["loss"] for h in result2.history]
    assert all(x == x for x in losses) and losses[-1] < losses[0]  # finite, and the task is learnt
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    trained2 = {n: p for n, p in model2.named_parameters() if p.requires_grad}
    assert all(torch.equal(p, trained2[n]) for n, p in trained.items())
    assert all(not torch.equal(p, loaded[n]) for n, p in trained.items() if "lora_B" in n)  # B starts at 0
    # 2 layers x 7 projections (LoRA on all linear layers: their base layers); the tied LM head is left alone
    assert seen == [torch.bfloat16] * 14 and seen2 == []
    [line] = [x for x in lines if x.startswith("frozen weights: ")]
    assert line.startswith("frozen weights: 14 linear tensors (") and "kept fp32" not in line
    assert not [x for x in lines2 if x.startswith("frozen weights")]
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.dtype == torch.float32 and torch.equal(p, loaded[n]), n


def test_an_fp32_run_holds_nothing(make_config, tmp_path):
    model, _, lines, loaded, seen = _train(_config(make_config, tmp_path, "fp32"), "fp32")
    assert seen == [] and not [x for x in lines if x.startswith("frozen weights")]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_weight_that_differs_from_its_file_stays_fp32(make_config, tmp_path):
    def nudge(model):
        with torch.no_grad():
            frozen.frozen_linear_params(model)[0].add_(1.0)  # as if transformers had changed it on load

    model, _, lines, loaded, seen = _train(_config(make_config, tmp_path, "nudged"), "bf16", nudge)
    assert len(seen) == 13
    [line] = [x for x in lines if x.startswith("frozen weights: ")]
    assert "13 linear tensors" in line and "; 1 kept fp32 (not found as they are in the model's files)" in line
    assert all(torch.equal(p, loaded[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_a_file_changed_under_the_run_is_an_error_naming_it(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(copy), LoraConfig(target_modules=["q_proj"]))
    held, kept = frozen.hold(model, copy)
    assert kept == 0 and len(held) == 14  # every frozen linear weight, q_proj's base layers included
    assert {h.key for h in held} >= {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    weights = load_file(copy / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"] += 1.0
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"model.safetensors: tensor 'model.layers.1.mlp.down_proj.weight' changed "
                                         r"while the run trained.*training.frozen_bf16=false"):
        frozen.restore(held)


def test_an_encoder_under_a_task_head_finds_its_bare_names(make_config, tiny_bert_dir, tmp_path):
    from tuneforge.stages import STAGES

    rows = tiny.toy_cls_rows(32)
    data = tiny.write_jsonl(tmp_path / "cls.jsonl", rows)
    cfg = make_config(model=str(tiny_bert_dir), stage="classify", data__train=str(data), data__eval=str(data),
                      training__max_steps=2, training__precision="bf16", eval__before=False,
                      method={"name": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]},
                      output_dir=str(tmp_path / "cls"))
    lines: list[str] = []
    STAGES["classify"].run(cfg, lines.append)
    # 2 layers x (query, key, value, attention output, intermediate, output): weights and biases; the pooler too.
    # The new classifier's frozen original (PEFT keeps it beside the trained copy) is in no file: kept fp32
    [line] = [x for x in lines if x.startswith("frozen weights: ")]
    assert line.startswith("frozen weights: 26 linear tensors (") and line.endswith("; 2 kept fp32 (not found as "
                                                                                    "they are in the model's files)")
    assert frozen.key_candidates("base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight",
                                 "bert") == ["bert.encoder.layer.0.attention.self.query.weight",
                                             "encoder.layer.0.attention.self.query.weight"]
