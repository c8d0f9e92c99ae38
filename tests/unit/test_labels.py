"""Label masks: golden lists on hand-written conversations; EOS labelled even though pad == eos."""

from tuneforge.data.templates import (
    ALPACA_TEMPLATE,
    IGNORE,
    apply_template,
    build_pretrain_examples,
    build_sft_example,
)

CONVERSATION = [
    {"role": "system", "content": "say yes"},
    {"role": "user", "content": "hi there"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "ok bye"},
]


def _tokens(tok, ids):
    return [tok.convert_ids_to_tokens(i) if i != IGNORE else None for i in ids]


def test_chat_labels_golden(tiny_tokenizer):
    ex = build_sft_example(tiny_tokenizer, CONVERSATION)
    assert tiny_tokenizer.convert_ids_to_tokens(ex.input_ids) == [
        "<|im_start|>", "system", "\n", "say", " ", "yes", "<|im_end|>", "\n",
        "<|im_start|>", "user", "\n", "hi", " ", "there", "<|im_end|>", "\n",
        "<|im_start|>", "assistant", "\n", "hello", "<|im_end|>", "\n",
        "<|im_start|>", "user", "\n", "bye", "<|im_end|>", "\n",
        "<|im_start|>", "assistant", "\n", "ok", " ", "bye", "<|im_end|>", "\n",
    ]  # fmt: skip
    assert _tokens(tiny_tokenizer, ex.labels) == (
        [None] * 19 + ["hello", "<|im_end|>"] + [None] * 10 + ["ok", " ", "bye", "<|im_end|>"] + [None]
    )


def test_eos_is_labelled_although_pad_equals_eos(tiny_tokenizer):
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.eos_token_id
    ex = build_sft_example(tiny_tokenizer, CONVERSATION[1:3])
    supervised = [t for t in ex.labels if t != IGNORE]
    assert supervised[-1] == tiny_tokenizer.eos_token_id
    assert ex.labels.count(tiny_tokenizer.eos_token_id) == 1  # the user turn's <|im_end|> is not labelled


def test_alpaca_template_golden(tiny_tokenizer):
    tiny_tokenizer.chat_template = None
    assert apply_template(tiny_tokenizer, "auto") == "alpaca"
    assert tiny_tokenizer.chat_template == ALPACA_TEMPLATE
    ex = build_sft_example(tiny_tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}])
    text = tiny_tokenizer.decode(ex.input_ids)
    assert text == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nhi\n\n### Response:\nyes<|im_end|>\n\n"
    )
    assert _tokens(tiny_tokenizer, ex.labels)[-3:] == ["yes", "<|im_end|>", None]
    assert sum(t != IGNORE for t in ex.labels) == 2


def test_template_without_eos_gets_one_appended(tiny_tokenizer):
    tiny_tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}" \
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    ex = build_sft_example(tiny_tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}])
    assert _tokens(tiny_tokenizer, ex.labels)[-3:] == ["yes", "\n", "<|im_end|>"]
    assert ex.input_ids[-1] == tiny_tokenizer.eos_token_id


def test_pretrain_every_token_supervised_and_split(tiny_tokenizer):
    [ex] = build_pretrain_examples(tiny_tokenizer, "the sky is blue .", 100, split=False)
    assert ex.labels == ex.input_ids and ex.input_ids[-1] == tiny_tokenizer.eos_token_id
    chunks = build_pretrain_examples(tiny_tokenizer, "one two three four five six seven", 4, split=True)
    assert [len(c.input_ids) for c in chunks] == [4, 4, 4, 2]  # 13 word/space tokens + EOS
