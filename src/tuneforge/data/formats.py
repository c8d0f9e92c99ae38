"""The sft and pretrain record formats, detected from the fields and normalised: sft -> chat messages,
pretrain -> text. The checks are data.fields' (the ones `tuneforge data check` runs).

    alpaca              {"instruction", "input"?, "output"}
    prompt_completion   {"prompt", "completion"}
    messages            {"messages": [{"role", "content"}, ...], "tools"?} (tool calls: data.tools)
    text                {"text"} (pretrain)
"""

from __future__ import annotations

from tuneforge.data.fields import ROLES, Issue, Messages, check_messages, raise_first, string_field
from tuneforge.data.load import Record
from tuneforge.data.tools import is_tool_row, tool_messages
from tuneforge.errors import DataError

__all__ = ["FIELDS", "ROLES", "Messages", "detect_format", "find_format", "sft_messages", "to_messages", "to_text"]

FIELDS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
SFT_FORMATS = ("messages", "alpaca", "prompt_completion")  # detection order


def find_format(data: dict, issues: list[Issue]) -> str | None:
    """The sft format whose fields the record has, or None with an `unknown_format` issue."""
    keys = set(data)
    fmt = next((name for name in SFT_FORMATS if set(FIELDS[name]) <= keys), None)
    if fmt is None:
        expected = "; ".join(f"{n}: {', '.join(FIELDS[n])}" for n in SFT_FORMATS)
        issues.append(Issue("unknown_format", f"cannot tell the sft format from fields {sorted(keys)}; "
                                              f"expected one of ({expected})"))
    return fmt


def detect_format(record: Record, kind: str = "sft", text_field: str = "text") -> str:
    """The format of a record of `kind` (a record kind, stage_info(stage).records: "sft" or "pretrain")."""
    if kind == "pretrain":
        if text_field in record.data:
            return "text"
        raise DataError(f"{record.where}: pretrain needs a {text_field!r} field; found fields {sorted(record.data)}")
    issues: list[Issue] = []
    fmt = find_format(record.data, issues)
    raise_first(issues, record.where)
    assert fmt is not None
    return fmt


def sft_messages(data: dict, fmt: str, issues: list[Issue]) -> Messages | None:
    """An sft record of format `fmt` as chat messages; None (with every issue appended) when unusable."""
    if fmt == "messages":
        if is_tool_row(data):  # tools, tool_calls, tool results: data.tools validates them
            return tool_messages(data, issues)[0]
        return check_messages(data.get("messages"), "messages", issues)
    if fmt not in ("alpaca", "prompt_completion"):
        issues.append(Issue("unknown_format", f"format {fmt!r} is not an sft format"))
        return None
    n_before = len(issues)
    prompt_key, answer_key = FIELDS[fmt]
    prompt, answer = string_field(data, prompt_key, issues), string_field(data, answer_key, issues)
    extra = string_field(data, "input", issues, required=False) if fmt == "alpaca" else None
    if len(issues) > n_before:
        return None
    assert prompt is not None and answer is not None
    user = f"{prompt}\n\n{extra}" if extra and extra.strip() else prompt
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def to_messages(record: Record, fmt: str, system_prompt: str | None = None) -> Messages:
    """Normalise one sft record to chat messages (system prompt prepended when configured and absent)."""
    issues: list[Issue] = []
    messages = sft_messages(record.data, fmt, issues)
    raise_first(issues, record.where)
    assert messages is not None
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def to_text(record: Record, text_field: str = "text") -> str:
    issues: list[Issue] = []
    text = string_field(record.data, text_field, issues)
    raise_first(issues, record.where)
    assert text is not None
    return text
