"""Evaluation's batched generation (left padding, KV cache) on models whose trained part is virtual tokens (prefix
and prompt tuning) or a weight delta (LoRA): the greedy tokens of each prompt must be those of that prompt alone,
decoded by full forwards without a cache. Prefix tuning prepends keys and values to every layer's cache and
prompt tuning prepends embeddings, so the padding mask and the positions have to follow; a mismatch here
would score a trained run's exact match on tokens it would not produce."""

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tuneforge.evaluation.generate import _groups, generate, prepends_virtual_inputs

CONFIGS = {
    "prefix": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    "prompt": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    "lora": lambda: LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"]),
}


def _greedy_alone(model, prompt: list[int], new: int, eos: int) -> list[int]:
    ids = list(prompt)
    for _ in range(new):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           use_cache=False).logits
        ids.append(int(logits[0, -1].argmax()))
        if ids[-1] == eos:
            break
    return ids[len(prompt):]


@pytest.mark.parametrize("method", list(CONFIGS))
def test_batched_generation_equals_each_prompt_alone(method, tiny_model_dir, tiny_tokenizer):
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), CONFIGS[method]())
    with torch.no_grad():  # a trained-looking part: far from its initial value, so it changes what is generated
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 1.0)
    vocab = tiny_tokenizer.vocab_size
    prompts = [[(7 * i + 3 * j) % (vocab - 10) + 5 for j in range(n)] for i, n in enumerate((9, 4, 6, 4, 2, 9))]
    texts = generate(model, tiny_tokenizer, prompts, max_new_tokens=8, precision="fp32", batch_size=4)
    eos = tiny_tokenizer.eos_token_id
    want = [tiny_tokenizer.decode(_greedy_alone(model, p, 8, eos), skip_special_tokens=True) for p in prompts]
    assert texts == want
    assert len(set(want)) > 1  # the prompts lead to different continuations: the comparison can tell them apart


def test_only_input_prepending_methods_batch_by_length(tiny_model_dir, tiny_tokenizer):
    models = {name: get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), make())
              for name, make in CONFIGS.items()}
    assert {n: prepends_virtual_inputs(m) for n, m in models.items()} == {"prefix": False, "prompt": True,
                                                                            "lora": False}
    assert not prepends_virtual_inputs(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    ids = [[5] * n for n in (3, 5, 3, 3, 5)]
    assert _groups(models["lora"], tiny_tokenizer, ids, 2) == [[0, 2], [3, 1], [4]]  # shortest first
    assert _groups(models["prompt"], tiny_tokenizer, ids, 2) == [[0, 2], [3], [1, 4]]
    texts = ["a b c", "a b", "c b a"]  # rendered prompts: grouped by their token length
    lengths = [len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    groups = _groups(models["prompt"], tiny_tokenizer, texts, 8)
    assert sorted(j for g in groups for j in g) == [0, 1, 2]
    assert all(len({lengths[j] for j in g}) == 1 for g in groups)
