"""training.frozen_bf16 on the TRL preference bridge (DPO, KTO, ORPO, SimPO through train_with_callbacks): under
bf16 autocast a LoRA run holds the frozen linear weights in bf16 while the Trainer trains, with the same losses bit
for bit as the run that keeps them fp32 (autocast rounds them so at every use), and the base in fp32 again
afterwards, equal to its file. Methods whose Trainer checkpoints hold a whole model (freeze) are not held;
bf16_stream says it is not used there. GRPO is not held (TRL generates outside autocast) and trains in bf16."""

import json

import pytest
import stage_kit as kit
import torch
from safetensors.torch import load_file
from test_grpo import QUESTIONS

import tiny
from tuneforge.stages import STAGES

LORA = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
HELD = "held in bf16 while training"


def _pref(make_config, tmp_path, name, stage="dpo", **overrides):
    files = kit.preference_files(tmp_path, 32, 8)
    return kit.preference_config(make_config, files, stage, **{
        "output_dir": str(tmp_path / name), "training__precision": "bf16", "training__max_steps": 6,
        "training__learning_rate": 1e-2, "eval__before": False, **overrides})


def _grpo(make_config, tmp_path, name, **overrides):
    train = tiny.write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS * 2])
    block = {"rewards": [{"function": "test_grpo:word_share"}], "num_generations": 4, "max_new_tokens": 8,
             "beta": 0.04}
    return make_config(**{"stage": "grpo", "grpo": block, "data__train": str(train), "data__eval": None,
                          "training__learning_rate": 1e-2, "training__max_steps": 4, "training__max_length": 64,
                          "training__precision": "bf16", "output_dir": str(tmp_path / name), **overrides})


def _run(cfg):
    lines: list[str] = []
    out = STAGES[cfg.stage].run(cfg, lines.append)
    losses = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    return out, lines, losses


def _base_is_the_file(out, model_dir):
    """The saved adapter was trained against the file's fp32 base: reload and compare a frozen weight."""
    from tuneforge.models import load_model

    weights = load_file(str(next(model_dir.glob("*.safetensors"))))
    base = load_model(str(model_dir))
    name = "model.layers.0.mlp.down_proj.weight"
    assert base.get_parameter(name).dtype == torch.float32 and torch.equal(base.get_parameter(name), weights[name])


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_lora_holds_the_frozen_linear_weights_with_the_same_losses(stage, make_config, tmp_path, tiny_model_dir):
    out, lines, held = _run(_pref(make_config, tmp_path, "held", stage, method=LORA))
    _, plain_lines, plain = _run(_pref(make_config, tmp_path, "plain", stage, method=LORA,
                                       training__frozen_bf16=False))
    assert any(HELD in x and "linear tensors" in x for x in lines), lines
    assert not any(HELD in x for x in plain_lines)
    assert all(isinstance(v, float) for v in held) and len(held) == len(plain) == 6
    assert held == plain  # bit for bit: autocast rounded the fp32 weights to these bf16 values at every use
    assert min(held[-2:]) < held[0]  # the separable pairs are learned
    _base_is_the_file(out, tiny_model_dir)


def test_grpo_is_not_held_and_trains_in_bf16(make_config, tmp_path):
    out, lines, losses = _run(_grpo(make_config, tmp_path, "grpo", method=LORA))
    assert not any(HELD in x for x in lines) and len(losses) == 4
    assert json.loads((out / "metrics.json").read_text())["train"]["precision"] == "bf16"


def test_freeze_on_the_bridge_is_not_held_and_stream_says_so(make_config, tmp_path):
    _, lines, losses = _run(_pref(make_config, tmp_path, "freeze", method={"name": "freeze", "last_n_layers": 1}))
    assert not any(HELD in x for x in lines) and all(v == v for v in losses)
    _, lines, _ = _run(_pref(make_config, tmp_path, "stream", method=LORA, training__bf16_stream=True))
    assert any("training.bf16_stream: not on this stage's Trainer" in x for x in lines)
    held = [x for x in lines if HELD in x]
    assert len(held) == 1 and "others" not in held[0]  # the linear weights only
