"""Tool-calling rows (data.tools): the label mask of a tool conversation golden-tested on the tiny tokenizer with
the built-in chatml_tools template (loss on the assistant's call and answer only), a template that cannot render
tools refused with file:line, `data check` naming each bad tool row, training refusing them (exit 2), the call
parser and the tool_call_match metric."""

from __future__ import annotations

import json

import pytest

from tiny import write_jsonl
from tuneforge.data.templates import IGNORE, apply_template, build_prompt_ids, build_sft_example, encode
from tuneforge.data.tools import parse_tool_calls, tool_messages, tool_template_problem
from tuneforge.errors import DataError

TOOLS = [{"type": "function", "function": {"name": "color", "description": "the color of a thing",
                                           "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}]
CALL = {"type": "function", "function": {"name": "color", "arguments": {"x": "sky"}}}
ROW = {"tools": TOOLS, "messages": [
    {"role": "system", "content": "answer ."},
    {"role": "user", "content": "what color is the sky ?"},
    {"role": "assistant", "content": None, "tool_calls": [{**CALL, "function": {"name": "color",
                                                                                "arguments": '{"x": "sky"}'}}]},
    {"role": "tool", "content": "blue"},
    {"role": "assistant", "content": "the sky is blue ."},
]}
TOOLS_JSON = json.dumps(TOOLS[0])
HEADER = ("<|im_start|>system\nanswer .\n\n# Tools\n\nYou may call one or more functions to assist with the user query."
          "\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" + TOOLS_JSON +
          "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
          "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
          "<args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nwhat color is the sky ?<|im_end|>\n"
          "<|im_start|>assistant\n")
# (text, supervised) written by hand: the call and the answer through <|im_end|>; the system turn, the function
# list, the user turn, the tool result and the newline after each <|im_end|> are never supervised.
GOLDEN = [
    (HEADER, False),
    ('<tool_call>\n{"name": "color", "arguments": {"x": "sky"}}\n</tool_call><|im_end|>', True),
    ("\n<|im_start|>user\n<tool_response>\nblue\n</tool_response><|im_end|>\n<|im_start|>assistant\n", False),
    ("the sky is blue .<|im_end|>", True),
    ("\n", False),
]


@pytest.fixture
def tools_tokenizer(tiny_tokenizer):
    apply_template(tiny_tokenizer, "chatml_tools")
    return tiny_tokenizer


def test_tool_conversation_label_mask_is_golden(tools_tokenizer):
    issues: list = []
    messages, tools = tool_messages(ROW, issues)
    assert not issues and messages[2]["tool_calls"][0]["function"]["arguments"] == {"x": "sky"}  # string parsed
    example = build_sft_example(tools_tokenizer, messages, "t.jsonl:1", tools=tools)
    want_ids, want_labels = [], []
    for text, supervised in GOLDEN:
        ids = encode(tools_tokenizer, text)
        want_ids += ids
        want_labels += ids if supervised else [IGNORE] * len(ids)
    assert example.input_ids == want_ids
    assert example.labels == want_labels
    # the prompt a server builds for the call is exactly the training prefix before the call
    prompt = build_prompt_ids(tools_tokenizer, messages[:2], tools=tools)
    assert prompt == encode(tools_tokenizer, HEADER)


def test_training_examples_render_the_rows_tools(tmp_path, make_config, tools_tokenizer):
    from tuneforge.data.dataset import load_examples
    from tuneforge.data.load import load_records

    path = write_jsonl(tmp_path / "t.jsonl", [ROW])
    cfg = make_config(data__train=str(path), data__eval=None, data__template="chatml_tools",
                      training__max_length=512)
    examples, _ = load_examples(cfg, tools_tokenizer, path, load_records(path))
    messages, tools = tool_messages(ROW, [])
    want = build_sft_example(tools_tokenizer, messages, tools=tools)
    assert list(examples[0].input_ids) == want.input_ids and list(examples[0].labels) == want.labels
    assert list(examples[0].input_ids[: len(encode(tools_tokenizer, HEADER))]) == encode(tools_tokenizer, HEADER)


def test_control_tokens_in_tool_arguments_stay_plain_text(tools_tokenizer):
    row = json.loads(json.dumps(ROW))
    row["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"x": "<|im_end|>"}
    messages, tools = tool_messages(row, [])
    example = build_sft_example(tools_tokenizer, messages, tools=tools)
    end = tools_tokenizer.convert_tokens_to_ids("<|im_end|>")
    header = len(encode(tools_tokenizer, HEADER))
    call_ids = example.input_ids[header: example.labels.index(IGNORE, header)]
    assert call_ids.count(end) == 1 and call_ids[-1] == end  # only the template's end of turn is special


def test_a_template_that_drops_tools_is_refused_with_the_row(tiny_tokenizer):
    assert "drops the tools list, the call's name" in tool_template_problem(tiny_tokenizer)
    messages, tools = tool_messages(ROW, [])
    with pytest.raises(DataError, match=r"^t\.jsonl:3: this row uses tools.*data\.template: chatml_tools"):
        build_sft_example(tiny_tokenizer, messages, "t.jsonl:3", tools=tools)


BAD = [
    ({"tools": TOOLS, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls":
      [{"type": "function", "function": {"name": "weather", "arguments": {}}}]}]}, "unknown_tool"),
    ({"tools": TOOLS, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls":
      [{"type": "function", "function": {"name": "color", "arguments": "{x: sky"}}]}]}, "bad_arguments"),
    ({"tools": TOOLS, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls":
      [{"type": "function", "function": {"name": "color", "arguments": "[1, 2]"}}]}]}, "bad_arguments"),
    ({"tools": TOOLS, "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "blue"},
                                   {"role": "assistant", "content": "ok"}]}, "orphan_tool_result"),
    ({"tools": [{"name": "color"}], "messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "ok"}]}, "bad_tools"),
    ({"tools": TOOLS, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "",
      "tool_calls": [CALL]}, {"role": "tool", "content": "blue"}]}, "turn_order"),
]


def test_data_check_names_each_bad_tool_row(tmp_path, tools_tokenizer):
    from tuneforge.data.load import iter_records
    from tuneforge.datatools.check import ERRORS, check_records

    path = write_jsonl(tmp_path / "t.jsonl", [ROW] + [row for row, _ in BAD])
    report = check_records(iter_records(path), "sft", tokenizer=tools_tokenizer, path=path)
    found = {(kind, e.split(": ")[0]) for kind, f in report.findings.items() for e in f.examples}
    want = {(kind, f"{path}:{i}") for i, (_, kind) in enumerate(BAD, start=2)}
    assert want <= found and all(kind in ERRORS for kind, _ in want)
    assert report.valid == 1 and report.formats["messages"] == 1


def test_training_refuses_a_bad_tool_row_naming_its_line(tmp_path, make_config):
    from tuneforge.data.dataset import load_train_eval_records  # what every stage reads its data with

    path = write_jsonl(tmp_path / "tools.jsonl", [ROW, ROW, BAD[0][0]])
    cfg = make_config(data__train=str(path), data__eval=None, data__template="chatml_tools")
    with pytest.raises(DataError, match=rf"unknown_tool \(1\)[\s\S]*{path}:3: messages\[1\]\.tool_calls\[0\] calls "):
        load_train_eval_records(cfg, print)
    assert DataError.exit_code == 2


def test_parse_tool_calls_and_the_metric():
    from tuneforge.evaluation.metrics import compute

    text = ('ok\n<tool_call>\n{"name": "color", "arguments": {"x": "sky"}}\n</tool_call>'
            '\n<tool_call>\n{bad}\n</tool_call>')
    content, calls = parse_tool_calls(text)
    assert calls == [{"type": "function", "function": {"name": "color", "arguments": '{"x": "sky"}'}}]
    assert content == "ok\n\n<tool_call>\n{bad}\n</tool_call>"  # an unparseable block stays content
    ref = '<tool_call>\n{"name": "color", "arguments": {"x": "sky", "n": 1}}\n</tool_call>'
    preds = ['<tool_call>{"arguments": {"n": 1.0, "x": "sky"}, "name": "color"}</tool_call>',  # same call
             '<tool_call>\n{"name": "color", "arguments": {"x": "grass", "n": 1}}\n</tool_call>', "the sky is blue"]
    assert compute(["tool_call_match"], preds, [ref] * 3) == {"tool_call_match": pytest.approx(1 / 3)}
    # no call expected: a call is wrong, the same answer right
    assert compute(["tool_call_match"], [ref, " blue  ", "red"], ["blue"] * 3) == {"tool_call_match": 1 / 3}


def test_generation_items_of_a_tool_row_show_the_tools_and_expect_the_call(tmp_path, make_config, tools_tokenizer):
    from tuneforge.data.load import load_records
    from tuneforge.evaluation.items import generation_items
    from tuneforge.evaluation.metrics import compute

    held_out = {"tools": TOOLS, "messages": ROW["messages"][1:3]}  # ends on the call
    path = write_jsonl(tmp_path / "eval.jsonl", [held_out])
    cfg = make_config(data__template="chatml_tools")
    item = generation_items(cfg, tools_tokenizer, load_records(path))[0]
    assert item.reference == '<tool_call>\n{"name": "color", "arguments": {"x": "sky"}}\n</tool_call>'
    assert item.prompt_ids == build_prompt_ids(tools_tokenizer, tool_messages(held_out, [])[0][:1], tools=TOOLS)
    assert item.prompt.startswith("<|im_start|>system\n# Tools")
    assert compute(["tool_call_match"], [item.reference], [item.reference]) == {"tool_call_match": 1.0}
