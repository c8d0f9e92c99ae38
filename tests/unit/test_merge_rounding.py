"""The merge check (models/verify.merge_and_verify) decides in fp64 where fp32 rounding alone exceeds its
1e-4 bound: a correct merge of a large tiny LoRA passes, a merge off by 0.1% in one layer is still refused."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.models.verify import MergeMismatch, merge_and_verify

TEXTS = ["what color is the sky ? the sky is blue .", "hello there how are you fine thanks bye ok"]


def large_lora(model_dir, scale: float = 0.5):
    """A tiny LoRA whose updates are large, as after a long run at a high rate: its merged fp32 logits are
    2e-4 from the adapter model's (4.5e-5 in fp64), with logits of about 9 either way."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targets = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, scale)
    return model.eval()


def reload(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_fp32_rounding_of_a_correct_merge_is_not_a_mismatch(tiny_model_dir, tmp_path):
    # The fp32 difference depends on the CPU's kernels (2e-4 on an Intel Xeon, 9e-5 on an AMD Zen 4); the fp64 one
    # is the merged weights' own fp32 rounding (4.5e-5 on both). A bound between them exercises the fp64 decision
    # on any CPU.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    atol = 6e-5
    diff = merge_and_verify(large_lora(tiny_model_dir), tokenizer, tmp_path / "merged", TEXTS, reload, atol=atol)
    report = json.loads((tmp_path / "merged" / "merge.json").read_text())
    assert report["max_abs_logit_diff"] > atol  # fp32 alone is over the bound: refused before the fp64 check
    assert report["max_abs_logit_diff_fp64"] == diff < atol


def test_a_slightly_wrong_merge_is_still_refused(tiny_model_dir, tmp_path):
    def reload_wrong(path):  # one merged weight 0.1% off: what a wrong scaling of one layer's update does
        model = reload(path)
        with torch.no_grad():
            model.model.layers[0].self_attn.v_proj.weight.mul_(1.001)
        return model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(MergeMismatch, match=r"in fp64\) > 0.0001"):
        merge_and_verify(large_lora(tiny_model_dir), tokenizer, tmp_path / "merged", TEXTS, reload_wrong)
    assert not (tmp_path / "merged").exists()
