"""What a method carries: its load and default learning rate (every method, so a new one cannot forget them),
and LoRA / QLoRA / IA3 targets that fit the architecture: peft's mapping (Llama q_proj/v_proj, BERT
query/value), else the attention's linear layers; a list that matches nothing is a ConfigError (exit 2)
naming the model's linear layers; all-linear keeps working, on a classifier too."""

from __future__ import annotations

import peft
import pytest
import torch
import torch.nn as nn
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from tuneforge.config.schema import METHOD_CONFIGS, IA3Config, LoraConfig
from tuneforge.errors import ConfigError
from tuneforge.methods import METHODS, MethodContext, count_params

SEQ_CLS = MethodContext("unused", task_type="SEQ_CLS", head_modules=("classifier",))


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=64))


def tiny_bert() -> BertForSequenceClassification:
    """Built in-process (no download): BERT names its projections query / key / value / dense."""
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64, num_labels=2))


def adapted(model: nn.Module, kind: str = "lora_A") -> set[str]:
    """Leaf names of the layers that received an adapter."""
    return {name.split(f".{kind}")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if f".{kind}." in name}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_a_load_and_a_default_learning_rate(name):
    method = METHODS[name]
    assert callable(method.load) and 0 < method.default_lr < 1
    assert not (method.saves_whole_model and method.mergeable)  # a whole model has nothing to fold in


def test_the_methods_table_and_the_schema_name_the_same_methods():
    assert list(METHODS) == list(METHOD_CONFIGS)


def test_target_modules_default_is_per_architecture():
    assert LoraConfig().target_modules is None and IA3Config().target_modules is None
    llama = METHODS["lora"].apply(tiny_llama(), LoraConfig(), MethodContext("unused"))
    assert adapted(llama) == {"q_proj", "v_proj"}
    bert = METHODS["lora"].apply(tiny_bert(), LoraConfig(), SEQ_CLS)  # was NoMatchingPeftModuleError (q_proj)
    assert adapted(bert) == {"query", "value"}
    assert any(p.requires_grad for n, p in bert.named_parameters() if "classifier" in n)  # the head trains
    ia3 = METHODS["ia3"].apply(tiny_bert(), IA3Config(), SEQ_CLS)
    assert {n.split(".ia3_l")[0].split(".")[-1] for n, _ in ia3.named_parameters() if ".ia3_l." in n} == {
        "key", "value", "dense"}  # peft's BERT IA3 set: key, value, output.dense (feed-forward)


class Mystery(nn.Module):
    """An architecture peft has no mapping for: the attention's linear layers are the default."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attn = nn.ModuleDict({"wq": nn.Linear(8, 8), "wkv": nn.Linear(8, 16)})
            self.mlp = nn.Linear(8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Cfg", (), {"model_type": "mystery", "to_dict": lambda self: {}})()
        self.layers = nn.ModuleList([self.Block(), self.Block()])


def test_without_a_peft_mapping_the_attention_linears_are_adapted():
    from tuneforge.methods.targets import default_lora_targets

    assert default_lora_targets(Mystery()) == ["self_attn.wkv", "self_attn.wq"]
    model = peft.get_peft_model(Mystery(), peft.LoraConfig(r=2, target_modules=default_lora_targets(Mystery())))
    assert adapted(model) == {"wq", "wkv"}  # not the mlp


@pytest.mark.parametrize("method,make,ctx", [("lora", tiny_llama, MethodContext("unused")),
                                              ("qlora", tiny_llama, MethodContext("unused")),
                                              ("ia3", tiny_bert, SEQ_CLS)])
def test_a_target_list_that_matches_nothing_names_the_linear_layers(method, make, ctx):
    mcfg = METHOD_CONFIGS[method](target_modules=["q_prj"])
    with pytest.raises(ConfigError, match=r"key 'method.target_modules': q_prj match no layer") as err:
        METHODS[method].apply(make(), mcfg, ctx)
    assert err.value.exit_code == 2
    names = "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" if make is tiny_llama else \
        "classifier, dense, key, query, value"
    assert f"its linear layers are: {names}" in str(err.value)


def test_all_linear_still_works_on_a_decoder_and_on_a_classifier():
    llama = METHODS["lora"].apply(tiny_llama(), LoraConfig(target_modules="all-linear"), MethodContext("unused"))
    assert adapted(llama) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    bert = METHODS["lora"].apply(tiny_bert(), LoraConfig(target_modules="all-linear"), SEQ_CLS)
    assert adapted(bert) == {"query", "key", "value", "dense"}  # the backbone; the new head trains whole
    trainable, total = count_params(bert)
    assert 0 < trainable < total


def test_lora_on_an_encoder_trains_through_the_cli(tmp_path, tiny_bert_dir, cls_data, capsys, monkeypatch):
    """The issue's case on the tiny BERT: `stage: classify, method: {name: lora}` with no target list (it used to
    stop with `unexpected NoMatchingPeftModuleError`, exit 1)."""
    import json

    import yaml

    from tuneforge import cli

    monkeypatch.setattr(cli, "_quiet_libraries", lambda: None)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "model": str(tiny_bert_dir), "stage": "classify", "method": {"name": "lora"},
        "data": {"train": str(cls_data["train"]), "eval": str(cls_data["eval"])},
        "training": {"max_steps": 2, "batch_size": 8, "progress": False, "precision": "fp32"},
        "eval": {"before": False}, "output_dir": str(tmp_path / "run")}))
    assert cli.main(["train", str(path)]) == 0, capsys.readouterr().err
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["query", "value"]
