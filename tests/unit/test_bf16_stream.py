"""training.bf16_stream (tuneforge/train/frozen.py): every frozen fp32 weight held in bf16 while the loop trains,
so the hidden states between layers are bf16. Proven here: the states really are bf16 inside and fp32 without the
key; a LoRA run learns, its first loss is as close to the fp32 run's as bf16 rounding allows and its curve stays
within bf16 rounding of the default run's; trained weights move, every frozen weight (a tied embedding included)
is held in bf16 and comes back in fp32 bit for bit, and the saved adapter reloads to the trained model's logits;
prefix tuning is left on the fp32 stream; an encoder under a classification head trains with it."""

from __future__ import annotations

import json
import math

import torch
from test_frozen import _config, _train

import tiny
from tuneforge.train import frozen


def _layer_dtypes(model, seen: list[torch.dtype]) -> None:
    """Record the dtype of the first decoder layer's output at every forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.model.layers[0].register_forward_hook(lambda _m, _i, out: seen.append(
        (out[0] if isinstance(out, tuple) else out).dtype))


def test_the_stream_is_bf16_learns_and_stays_within_bf16_rounding(make_config, tmp_path):
    dtypes_on: list[torch.dtype] = []
    dtypes_off: list[torch.dtype] = []
    lr = {"training__learning_rate": 1e-2}  # 3e-2 (the fixture's) is chaotic on this tiny model: bf16 and fp32
    on = _train(_config(make_config, tmp_path, "on", training__bf16_stream=True, **lr), "bf16",  # part at step 5
                lambda m: _layer_dtypes(m, dtypes_on))
    off = _train(_config(make_config, tmp_path, "off", **lr), "bf16", lambda m: _layer_dtypes(m, dtypes_off))
    ref = _train(_config(make_config, tmp_path, "fp32", **lr), "fp32")
    (model, result, lines, loaded, seen), (_, result_off, _, _, seen_off) = on, off
    assert set(dtypes_on) == {torch.bfloat16} and set(dtypes_off) == {torch.float32}
    losses, losses_off = [h["loss"] for h in result.history], [h["loss"] for h in result_off.history]
    losses_ref = [h["loss"] for h in ref[1].history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.3 * losses[0]  # the task is learnt
    # step 1 (the same weights): bf16 rounding of the states, not a different model; then the fp32 run's curve
    # within 10% at every step (measured: 6%; the fp32-stream bf16 run within 1%)
    assert abs(losses[0] - losses_ref[0]) / losses_ref[0] < 1e-2 and losses[0] != losses_off[0]
    assert all(abs(a - b) / b < 0.1 for a, b in zip(losses, losses_ref, strict=True)), (losses, losses_ref)
    # 14 linear weights as before, and the rest: the tied embedding / head and the 5 norms
    others = len(seen) - len(seen_off)
    assert seen == [torch.bfloat16] * len(seen) and len(seen_off) == 14 and others == 6
    [line] = [x for x in lines if x.startswith("frozen weights: ")]
    assert line.startswith("frozen weights: 14 linear tensors and 6 others (embeddings, norms: "
                           "training.bf16_stream)") and "kept fp32" not in line
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32 and ("lora_B" not in n or not torch.equal(p, loaded[n])), n
        else:
            assert p.dtype == torch.float32 and torch.equal(p, loaded[n]), n


def test_the_saved_adapter_reloads_to_the_trained_logits(make_config, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = _config(make_config, tmp_path, "saved", training__bf16_stream=True)
    model = _train(cfg, "bf16")[0]
    model.save_pretrained(tmp_path / "adapter")
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-6)


def test_prefix_tuning_keeps_the_fp32_stream(make_config, tmp_path):
    from tuneforge.stages import STAGES

    cfg = _config(make_config, tmp_path, "prefix", training__bf16_stream=True, training__precision="bf16",
                  method={"name": "prefix", "num_virtual_tokens": 4})
    assert not frozen.stream_applies(cfg) and frozen.stream_applies(_config(make_config, tmp_path, "lora",
                                                                            training__bf16_stream=True))
    lines: list[str] = []
    STAGES["sft"].run(cfg, lines.append)
    metrics = json.loads((tmp_path / "prefix" / "metrics.json").read_text())
    assert math.isfinite(metrics["train"]["final_loss"]) and metrics["train"]["steps"] == 8
    assert not [x for x in lines if "others (embeddings" in x]


def test_an_encoder_under_a_task_head_trains_on_a_bf16_stream(make_config, tiny_bert_dir, tmp_path):
    from tuneforge.stages import STAGES

    rows = tiny.toy_cls_rows(32)
    data = tiny.write_jsonl(tmp_path / "cls.jsonl", rows)
    cfg = make_config(model=str(tiny_bert_dir), stage="classify", data__train=str(data), data__eval=str(data),
                      training__max_steps=6, training__precision="bf16", training__bf16_stream=True,
                      eval__before=True, method={"name": "lora", "r": 4, "alpha": 8,
                                                  "target_modules": ["query", "value"]},
                      output_dir=str(tmp_path / "cls"))
    lines: list[str] = []
    STAGES["classify"].run(cfg, lines.append)
    [line] = [x for x in lines if x.startswith("frozen weights: ")]
    assert "others (embeddings, norms" in line
    metrics = json.loads((tmp_path / "cls" / "metrics.json").read_text())
    before, after = metrics["eval_before"], metrics["eval_after"]
    assert math.isfinite(metrics["train"]["final_loss"]) and after["loss"] < before["loss"]
    assert after["accuracy"] >= before["accuracy"]


def test_a_qlora_base_trains_on_a_bf16_stream(make_config, tmp_path):
    """4-bit linear weights are not held (not float); the norms and the embedding are, and the run learns."""
    cfg = _config(make_config, tmp_path, "qlora", training__bf16_stream=True, training__learning_rate=1e-2,
                  method={"name": "qlora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"})
    dtypes: list[torch.dtype] = []
    model, result, lines, loaded, seen = _train(cfg, "bf16", lambda m: _layer_dtypes(m, dtypes))
    losses = [h["loss"] for h in result.history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.7 * losses[0], losses
    assert set(dtypes) == {torch.bfloat16} and seen == [torch.bfloat16] * 6  # embedding + 5 norms
    [line] = [x for x in lines if x.startswith("frozen weights: ")]
    assert line.startswith("frozen weights: 0 linear tensors and 6 others")
    assert all(torch.equal(p, loaded[n]) for n, p in model.named_parameters() if not p.requires_grad)
