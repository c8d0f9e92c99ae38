"""Proof that inference shows the model what training trained it on. For every conversation of a run's
training file and every assistant turn in it, the prompt the engine builds from the run directory (saved
template and system prompt, a client's messages without the system prompt) equals byte for byte the prompt
text tuneforge's training code rendered, and token for token the prompt part of the example it trained on
(rebuilt from the base model and the run's config.yaml, as `tuneforge train` does), for the chat template
and the alpaca template."""

from __future__ import annotations

import pytest

import tiny
from tuneforge.data.dataset import load_examples
from tuneforge.data.formats import detect_format, to_messages
from tuneforge.data.load import load_records
from tuneforge.data.templates import IGNORE, apply_template, render
from tuneforge.inference.engine import load_engine
from tuneforge.models import load_tokenizer
from tuneforge.runs import run_config
from tuneforge.stages import STAGES

SYSTEM = "answer the question ."
MULTI_TURN = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there !"},
                  {"role": "user", "content": "what color is the sky ?"},
                  {"role": "assistant", "content": "the sky is blue ."}]},
    {"messages": [{"role": "system", "content": "say yes or no ."}, {"role": "user", "content": "is snow white ?"},
                  {"role": "assistant", "content": "yes"}, {"role": "user", "content": "is grass red ?"},
                  {"role": "assistant", "content": "no"}, {"role": "user", "content": "and the sun ?"},
                  {"role": "assistant", "content": "no ."}]},
]


def _supervised_starts(labels: list[int]) -> list[int]:
    """Where each supervised run (one assistant turn through its EOS) begins."""
    return [k for k, x in enumerate(labels) if x != IGNORE and (k == 0 or labels[k - 1] == IGNORE)]


def check_identity(run) -> tuple[int, int]:
    """Assert the identity for every turn of the run's training file; return (turns checked, turns where
    tokenizing the whole prompt text at once would have given other ids than training's)."""
    cfg = run_config(run)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)  # training's side: base model + config
    apply_template(tokenizer, cfg.data.template)
    records = load_records(cfg.data.train)
    examples, _ = load_examples(cfg, tokenizer, cfg.data.train, records)
    assert len(examples) == len(records)
    engine = load_engine(run)  # inference's side: the run directory only
    checked = joint_differs = 0
    for record, example in zip(records, examples, strict=True):
        fmt = detect_format(record, "sft")
        trained, sent = to_messages(record, fmt, cfg.data.system_prompt), to_messages(record, fmt)
        offset = len(trained) - len(sent)  # 1 when training prepended the configured system prompt
        turns = [j for j, m in enumerate(trained) if m["role"] == "assistant"]
        starts = _supervised_starts(example.labels)
        assert len(starts) == len(turns)
        for j, start in zip(turns, starts, strict=True):
            text = engine.chat_prompt(sent[: j - offset])
            assert text == render(tokenizer, trained[:j], add_generation_prompt=True)
            ids = engine.chat_prompt_ids(sent[: j - offset])
            assert ids == example.input_ids[:start]
            joint_differs += tokenizer(text, add_special_tokens=False)["input_ids"] != ids
            checked += 1
    return checked, joint_differs


@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_inference_prompt_equals_training_prompt(template, make_config, tmp_path):
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.toy_sft_rows(12) + MULTI_TURN)
    run = STAGES["sft"](make_config(data__train=str(train), data__template=template, data__system_prompt=SYSTEM,
                                    training__max_steps=2, eval__before=False, eval__generate_samples=0))
    checked, _ = check_identity(run)
    assert checked == 12 + 2 + 3
    engine = load_engine(run)
    prompt = engine.chat_prompt([{"role": "user", "content": "hi"}])
    assert engine.template == template and engine.system_prompt == SYSTEM and SYSTEM in prompt
    # the tiny tokenizer's own template is ChatML: the alpaca run must not fall back to it
    assert (("### Instruction:" in prompt) == (template == "alpaca")
            and ("<|im_start|>" in prompt) == (template == "chat"))


@pytest.mark.real
def test_identity_on_the_embedded_model_with_alpaca(make_config, tmp_path):
    """SmolLM2's byte-level BPE tokenizes the blank line after EOS differently when the whole prompt is one
    string: the engine must tokenize earlier turns piece by piece, as training did."""
    train = tiny.write_jsonl(tmp_path / "train.jsonl", MULTI_TURN)
    run = STAGES["sft"](make_config(model="smollm2-135m-instruct", data__train=str(train), data__eval=None,
                                    data__template="alpaca", data__system_prompt=SYSTEM, training__max_steps=1,
                                    training__batch_size=2, training__learning_rate=1e-4,
                                    eval__before=False, eval__generate_samples=0))
    checked, joint_differs = check_identity(run)
    assert checked == 5 and joint_differs > 0
