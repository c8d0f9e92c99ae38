"""Tool calling over the OpenAI API (data.tools): a request's `tools` reach the prompt exactly as training renders
them (chatml_tools), `<tool_call>` blocks in the reply come back as `tool_calls` (plain and streamed), the
assistant's calls and the tool results of the history round-trip, and what cannot work is a 400 naming why.
The tiny model never writes a call, so the engine's generate is replaced by one that answers a fixed text and
records the prompt it was given; the prompt path and the server are the real ones."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

from conftest import serve
from tuneforge.data.templates import apply_template, build_prompt_ids
from tuneforge.data.tools import tool_messages
from tuneforge.inference.engine import Result

TOOLS = [{"type": "function", "function": {"name": "color", "description": "the color of a thing",
                                           "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}]
CALL_TEXT = 'ok\n<tool_call>\n{"name": "color", "arguments": {"x": "sky"}}\n</tool_call>'
ASK = [{"role": "user", "content": "what color is the sky ?"}]


@pytest.fixture(scope="module")
def tool_engine(served_run):
    from tuneforge.inference.engine import load_engine

    engine = load_engine(served_run, max_new_tokens=24, max_input_tokens=480)
    apply_template(engine.tokenizer, "chatml_tools")
    engine.replies, engine.prompts = [], []

    def generate(prompt_ids, params, on_text=None, cancel=None):
        engine.prompts.append(prompt_ids)
        text = engine.replies.pop(0)
        if on_text:
            on_text(text)
        return Result(text, len(prompt_ids), 5, "stop")

    engine.generate = generate
    return engine


@pytest.fixture(scope="module")
def tool_client(tool_engine):
    with serve(tool_engine) as (url, _):
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def test_tool_call_round_trip(tool_client, tool_engine):
    tok = tool_engine.tokenizer
    tool_engine.replies[:] = [CALL_TEXT, "the sky is blue ."]
    got = tool_client.chat.completions.create(model=tool_engine.name, messages=ASK, tools=TOOLS)
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "ok"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "color" and json.loads(call.function.arguments) == {
        "x": "sky"} and call.id.startswith("call-")
    system = [{"role": "system", "content": tool_engine.system_prompt}]  # the run's system prompt, as in training
    assert tool_engine.prompts[-1] == build_prompt_ids(tok, system + ASK, tools=TOOLS)
    # the history goes back as the client sends it: arguments a JSON string, the result with tool_call_id
    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "blue"}]
    got = tool_client.chat.completions.create(model=tool_engine.name, messages=history, tools=TOOLS)
    assert got.choices[0].message.content == "the sky is blue ." and not got.choices[0].message.tool_calls
    assert got.choices[0].finish_reason == "stop"
    messages, tools = tool_messages({"tools": TOOLS, "messages": system + history}, [], need_assistant=False)
    assert tool_engine.prompts[-1] == build_prompt_ids(tok, messages, tools=tools)
    text = tool_engine.chat_prompt(history, TOOLS)
    assert '{"name": "color", "arguments": {"x": "sky"}}' in text and "<tool_response>\nblue\n</tool_response>" in text


def test_streamed_tool_call(tool_client, tool_engine):
    tool_engine.replies[:] = [CALL_TEXT]
    chunks = list(tool_client.chat.completions.create(model=tool_engine.name, messages=ASK, tools=TOOLS,
                                                      stream=True))
    calls = [c for ch in chunks for c in (ch.choices[0].delta.tool_calls or []) if ch.choices]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("color", {"x": "sky"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_without_tools_the_text_is_left_alone(tool_client, tool_engine):
    tool_engine.replies[:] = [CALL_TEXT, CALL_TEXT]
    got = tool_client.chat.completions.create(model=tool_engine.name, messages=ASK)
    assert got.choices[0].message.content == CALL_TEXT and not got.choices[0].message.tool_calls
    got = tool_client.chat.completions.create(model=tool_engine.name, messages=ASK, tools=TOOLS, tool_choice="none")
    assert got.choices[0].message.content == CALL_TEXT


@pytest.mark.parametrize(("body", "param", "match"), [
    ({"tools": [{"name": "color"}]}, "tools", "tools\\[0\\] must be"),
    ({"tool_choice": "required", "tools": TOOLS}, "tool_choice", "only 'auto' and 'none'"),
    ({"messages": [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "size", "arguments": "{}"}}]},
        {"role": "tool", "content": "1"}], "tools": TOOLS}, "messages", "calls 'size', which is not in"),
    ({"messages": [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "color", "arguments": "{x"}}]},
        {"role": "tool", "content": "1"}], "tools": TOOLS}, "messages", "arguments must be a JSON object"),
    ({"messages": [*ASK, {"role": "tool", "content": "blue"}]}, "messages", "no assistant call before it"),
])
def test_bad_tool_requests_are_400(tool_client, tool_engine, body, param, match):
    with pytest.raises(openai.BadRequestError) as err:
        tool_client.chat.completions.create(model=tool_engine.name, **{"messages": ASK, **body})
    assert err.value.body["param"] == param and re.search(match, err.value.body["message"])


def test_a_template_that_cannot_render_tools_is_a_400(engine):
    with serve(engine) as (url, _):  # the shared run's engine: the tiny model's plain ChatML template
        r = httpx.post(f"{url}/chat/completions", json={"model": engine.name, "messages": ASK, "tools": TOOLS})
    assert r.status_code == 400 and "data.template: chatml_tools" in r.json()["error"]["message"]


def test_chat_shows_the_call_and_sends_the_tool_result_back(tool_engine):
    from io import StringIO

    from tuneforge.inference.chat import run_chat
    from tuneforge.inference.engine import Params

    tool_engine.replies[:] = [CALL_TEXT, "the sky is blue ."]
    out, err = StringIO(), StringIO()
    assert run_chat(tool_engine, Params(8), StringIO("what color is the sky ?\n/tool blue\n"), out, err, TOOLS) == 0
    assert out.getvalue() == f"{CALL_TEXT}\nthe sky is blue .\n"
    assert '(tool call: color({"x": "sky"}); answer with /tool RESULT)' in err.getvalue()
    call = {"type": "function", "function": {"name": "color", "arguments": {"x": "sky"}}}
    history = [{"role": "system", "content": tool_engine.system_prompt}, *ASK,
               {"role": "assistant", "content": "ok", "tool_calls": [call]},
               {"role": "tool", "name": "color", "content": "blue"}]
    assert tool_engine.prompts[-1] == build_prompt_ids(tool_engine.tokenizer, history, tools=TOOLS)
