"""Tool-calling chat rows: validation (with the issue kinds `tuneforge data check` reports), the built-in
tool-capable template (`data.template: chatml_tools`), the check that a chat template renders tools at all,
and parsing a model's `<tool_call>{...}</tool_call>` output back into OpenAI `tool_calls`.

A row is a `messages` row that may carry `tools` (OpenAI's function list), assistant `tool_calls` and `tool`
messages (results). Arguments are normalised to JSON objects (a JSON string is parsed), so every template
gets the shape transformers documents.

    issues = []; messages, tools = tool_messages(row, issues)       # None, None when unusable
    content, calls = parse_tool_calls('<tool_call>\\n{"name": "f", "arguments": {}}\\n</tool_call>')
"""

from __future__ import annotations

import json
import re
from typing import Any

from tuneforge.data.fields import Issue, Messages, missing
from tuneforge.errors import DataError

TOOL_KEYS = ("tools", "tool_calls")  # a row with either (or a tool message) is a tool row

# Hermes / Qwen2.5-style tool use in ChatML: the function list in the system turn inside <tools></tools>, each
# call as {"name", "arguments"} JSON inside <tool_call></tool_call>, results in a user turn inside
# <tool_response></tool_response>. Unlike Qwen's, no default system text is written.
CHATML_TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided "
    "with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- set call = tool_call.function if tool_call.function is defined else tool_call %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' }}"
    "{%- if call.arguments is string %}{{- call.arguments }}{%- else %}{{- call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def _has_tools(data: dict) -> bool:
    return "tools" in data and not missing(data["tools"])  # a null tools cell (CSV / Parquet): no tools


def is_tool_row(data: dict) -> bool:
    messages = data.get("messages")
    return _has_tools(data) or (isinstance(messages, list) and any(
        isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in messages))


def check_tools(raw: Any, issues: list[Issue], key: str = "tools") -> list[dict] | None:
    """A function list in OpenAI's shape: [{"type": "function", "function": {"name", "description"?,
    "parameters"?}}]. Returns it with "type" filled in, or None (a `bad_tools` issue) when it is not one."""
    if not isinstance(raw, list) or not raw:
        issues.append(Issue("bad_tools", f"{key!r} must be a non-empty list of "
                                         '{"type": "function", "function": {"name", "description", "parameters"}}'))
        return None
    out, names = [], set()
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            issues.append(Issue("bad_tools", f"{key}[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}"))
            return None
        name, params = fn.get("name"), fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(name, str) or not name.strip() or name in names:
            what = "a duplicate name" if name in names else "no name"
            issues.append(Issue("bad_tools", f"{key}[{i}].function has {what} (a non-empty string, unique)"))
            return None
        if not isinstance(params, dict) or not isinstance(fn.get("description", ""), str):
            issues.append(Issue("bad_tools", f"{key}[{i}].function: 'parameters' must be a JSON schema object "
                                             "and 'description' a string"))
            return None
        names.add(name)
        out.append({**tool, "type": "function"})
    return out


def parse_arguments(raw: Any) -> dict | None:
    """Call arguments as a dict: a JSON object, or a string holding one; None otherwise."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    return raw if isinstance(raw, dict) else None


def _calls(raw: Any, where: str, names: set[str], issues: list[Issue]) -> list[dict] | None:
    if not isinstance(raw, list) or not raw:
        issues.append(Issue("bad_tool_call", f"{where}.tool_calls must be a non-empty list of "
                                             '{"type": "function", "function": {"name", "arguments"}}'))
        return None
    out = []
    for j, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            issues.append(Issue("bad_tool_call", f"{at} must be {{\"type\": \"function\", \"function\": "
                                                 "{\"name\": ..., \"arguments\": {...}}}"))
            return None
        if fn["name"] not in names:
            known = ", ".join(sorted(names)) or "none: the row has no 'tools'"
            issues.append(Issue("unknown_tool", f"{at} calls {fn['name']!r}, which is not in the row's tools "
                                                f"({known})"))
            return None
        args = parse_arguments(fn.get("arguments", {}))
        if args is None:
            issues.append(Issue("bad_arguments", f"{at}: arguments must be a JSON object (or a string holding one), "
                                                 f"got {str(fn.get('arguments'))[:60]!r}"))
            return None
        out.append({**({"id": call["id"]} if "id" in call else {}), "type": "function",
                    "function": {"name": fn["name"], "arguments": args}})
    return out


def tool_messages(data: dict, issues: list[Issue], need_assistant: bool = True) -> tuple[Messages | None, list | None]:
    """(messages, tools) of a tool row, normalised (arguments as objects, a tool message named after its call),
    or (None, None) with every issue appended. Order: an optional system message, then user turns each answered
    by the assistant, an assistant turn with tool_calls followed by its tool results, then the assistant again."""
    n_before = len(issues)
    tools = check_tools(data["tools"], issues) if _has_tools(data) else []
    raw = data.get("messages")
    if not isinstance(raw, list) or not raw:
        issues.append(Issue("wrong_type", "'messages' must be a non-empty list of {role, content} objects"))
    if len(issues) > n_before:
        return None, None
    names = {t["function"]["name"] for t in tools or []}
    out: Messages = []
    pending: list[dict] = []  # the calls the next tool messages answer
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant", "tool"):
            issues.append(Issue("unknown_role" if isinstance(m, dict) else "bad_message",
                                f"{where}: unknown role {role!r}; expected system, user, assistant or tool"))
            return None, None
        calls = _calls(m["tool_calls"], where, names, issues) if role == "assistant" and m.get("tool_calls") else None
        if len(issues) > n_before:
            return None, None
        content = "" if content is None and calls else content
        if not isinstance(content, str) or (not content.strip() and role != "tool" and not calls):
            issues.append(Issue("empty_field" if isinstance(content, str) else "wrong_type",
                                f"{where}: {role} content must be a non-empty string"))
            return None, None
        previous = out[-1]["role"] if out else None
        if role == "tool" and not pending:
            issues.append(Issue("orphan_tool_result", f"{where}: a tool message with no assistant call before it"))
            return None, None
        expected = {"system": previous is None, "user": previous in (None, "system", "assistant") and not pending,
                    "assistant": previous in ("user", "tool") and not (pending and previous == "assistant"),
                    "tool": True}[role]
        if not expected:
            issues.append(Issue("turn_order", f"{where}: {role!r} cannot follow {previous!r} (system first, then user "
                                              "and assistant alternate; tool results follow the assistant's calls)"))
            return None, None
        message = {"role": role, "content": content}
        if calls:
            message["tool_calls"] = calls
            pending = list(calls)
        elif role == "tool":
            call = pending.pop(0) if len(pending) > 1 else pending[0]
            message["name"] = m.get("name") or call["function"]["name"]
            if "tool_call_id" in m:
                message["tool_call_id"] = m["tool_call_id"]
        elif role in ("user", "assistant"):
            pending = []
        out.append(message)
    if need_assistant and out[-1]["role"] != "assistant":
        kind = "no_assistant" if not any(m["role"] == "assistant" for m in out) else "turn_order"
        issues.append(Issue(kind, f"messages[{len(out) - 1}]: the conversation must end with an assistant turn"))
        return None, None
    return out, tools or None


def call_text(calls: list[dict]) -> str:
    """The Hermes-style text of calls (what chatml_tools renders after the assistant's content)."""
    return "\n".join(f'<tool_call>\n{{"name": {json.dumps(c["function"]["name"], ensure_ascii=False)}, '
                     f'"arguments": {json.dumps(c["function"]["arguments"], ensure_ascii=False)}}}\n</tool_call>'
                     for c in calls)


def reference_text(message: dict) -> str:
    """An assistant turn as text to compare generations with: its content, then its calls (call_text)."""
    calls = message.get("tool_calls")
    return "\n".join(p for p in (message["content"], call_text(calls) if calls else "") if p)


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """(content, tool_calls) of generated text: each `<tool_call>{"name", "arguments"}</tool_call>` block that
    holds valid JSON becomes an OpenAI call (arguments as a JSON string); anything else stays content."""
    calls, kept = [], []
    last = 0
    for match in _CALL.finditer(text):
        try:
            call = json.loads(match.group(1))
        except ValueError:
            continue
        args = call.get("arguments", call.get("parameters", {})) if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(args, dict):
            continue
        kept.append(text[last:match.start()])
        last = match.end()
        calls.append({"type": "function", "function": {"name": call["name"],
                                                       "arguments": json.dumps(args, ensure_ascii=False)}})
    kept.append(text[last:])
    return "".join(kept).strip(), calls


def same_calls(prediction: str, reference: str) -> bool:
    """The prediction makes the reference's calls (names and parsed arguments equal, in order); where the
    reference makes none, it makes none either and says the same (whitespace-normalised)."""
    want = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parse_tool_calls(reference)[1]]
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parse_tool_calls(prediction)[1]]
    if want:
        return got == want
    return not got and " ".join(prediction.split()) == " ".join(reference.split())


# -- does a chat template render tools? ---------------------------------------------------------------------
_PROBE_TOOL = {"type": "function", "function": {"name": "probe_fn_q7", "description": "probe_doc_k3",
                                                "parameters": {"type": "object", "properties": {}}}}
_PROBE = [{"role": "user", "content": "hi"},
          {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
              "name": "probe_fn_q7", "arguments": {"probe_key_x2": "probe_val_z9"}}}]},
          {"role": "tool", "name": "probe_fn_q7", "content": "probe_result_w4"},
          {"role": "assistant", "content": "done"}]
_VERDICTS: dict[str, str | None] = {}


def tool_template_problem(tokenizer) -> str | None:
    """What the tokenizer's chat template fails to render of a tool conversation (None: it renders it all):
    the function list, the call's name and arguments, the tool result. Cached per template text."""
    template = tokenizer.chat_template or ""
    if template not in _VERDICTS:
        try:
            text = tokenizer.apply_chat_template(_PROBE, tools=[_PROBE_TOOL], tokenize=False)
            plain = tokenizer.apply_chat_template(_PROBE, tokenize=False)
        except Exception as exc:  # jinja raises its own errors for roles a template refuses
            _VERDICTS[template] = f"fails on a tool conversation ({type(exc).__name__}: {exc})"
        else:
            lost = [what for what, s in (("the tools list", "probe_doc_k3"), ("the call's name", "probe_fn_q7"),
                                         ("the call's arguments", "probe_val_z9"), ("tool results", "probe_result_w4"))
                    if s not in text]
            if text == plain and "the tools list" not in lost:
                lost.insert(0, "the tools list")
            _VERDICTS[template] = "drops " + ", ".join(lost) if lost else None
    return _VERDICTS[template]


def require_tool_template(tokenizer, where: str) -> None:
    problem = tool_template_problem(tokenizer)
    if problem:
        raise DataError(f"{where}: this row uses tools, but the chat template {problem}; set data.template: "
                        "chatml_tools (Hermes-style <tools>/<tool_call> in ChatML) or use a model whose template "
                        "renders tools")


def row_tools(data: dict) -> list[dict] | None:
    """The function list of a row (already validated by the check pass), or None."""
    return check_tools(data["tools"], []) if _has_tools(data) else None
