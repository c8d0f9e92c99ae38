"""Record formats per stage, detected from the fields and normalised: sft -> chat messages, pretrain -> text.

    alpaca              {"instruction", "input"?, "output"}
    prompt_completion   {"prompt", "completion"}
    messages            {"messages": [{"role", "content"}, ...]}
    text                {"text"} (pretrain)
"""

from __future__ import annotations

from typing import Any

from tuneforge.data.load import Record
from tuneforge.errors import DataError

Messages = list[dict[str, str]]

FIELDS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
ROLES = {"system", "user", "assistant"}


def detect_format(record: Record, stage: str, text_field: str = "text") -> str:
    keys = set(record.data)
    if stage == "pretrain":
        if text_field in keys:
            return "text"
        raise DataError(f"{record.where}: pretrain needs a {text_field!r} field; found fields {sorted(keys)}")
    for name in ("messages", "alpaca", "prompt_completion"):
        if set(FIELDS[name]) <= keys:
            return name
    expected = "; ".join(f"{n}: {', '.join(f)}" for n, f in FIELDS.items() if n != "text")
    raise DataError(f"{record.where}: cannot tell the sft format from fields {sorted(keys)}; expected one of ({expected})")


def _text(record: Record, key: str, required: bool = True) -> str:
    value = record.data.get(key)
    if value is None or (isinstance(value, float) and value != value):  # CSV/Parquet nulls
        if required:
            raise DataError(f"{record.where}: missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{record.where}: field {key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise DataError(f"{record.where}: field {key!r} is empty")
    return value


def _messages(record: Record) -> Messages:
    raw: Any = record.data.get("messages")
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{record.where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out: Messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{record.where}: messages[{i}] must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if not isinstance(role, str) or role not in ROLES:  # a list or dict role is unhashable
            raise DataError(f"{record.where}: messages[{i}]: unknown role {role!r}; expected one of {sorted(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f"{record.where}: messages[{i}]: content must be a string")
        if role == "system" and i != 0:
            raise DataError(f"{record.where}: messages[{i}]: a system message may only come first")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{record.where}: no assistant message, so nothing to learn")
    return out


def to_messages(record: Record, fmt: str, system_prompt: str | None = None) -> Messages:
    """Normalise one sft record to chat messages (system prompt prepended when configured and absent)."""
    if fmt == "messages":
        messages = _messages(record)
    elif fmt == "alpaca":
        instruction, extra = _text(record, "instruction"), _text(record, "input", required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record, "output")}]
    elif fmt == "prompt_completion":
        messages = [
            {"role": "user", "content": _text(record, "prompt")},
            {"role": "assistant", "content": _text(record, "completion")},
        ]
    else:
        raise DataError(f"{record.where}: format {fmt!r} is not an sft format")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def to_text(record: Record, text_field: str = "text") -> str:
    return _text(record, text_field)
