"""Validate one record for a stage and reduce it to a `View`: the content that counts for duplicates,
the label, the chat messages. Every problem of the record is returned (not only the first), each with
a kind, so a check can count them.

    view, issues = view_record(record.data, "sft")

Stages: sft (alpaca / prompt_completion / messages), pretrain (text), classify (text, label,
text_pair?), reward and dpo (prompt?, chosen, rejected; strings or chat message lists), ppo and grpo
(prompt: a string or chat messages ending on a user turn; other fields go to reward functions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tuneforge.data.formats import FIELDS, ROLES, Messages

KINDS = {"sft": "sft", "pretrain": "pretrain", "classify": "classify", "reward": "preference", "dpo": "preference",
         "ppo": "prompt", "grpo": "prompt"}
STAGES = tuple(KINDS)


@dataclass(frozen=True)
class Fields:
    """Column names; classify and pretrain take theirs from the config (data.text_field, ...)."""

    text: str = "text"
    label: str = "label"
    text_pair: str = "text_pair"


DEFAULT_FIELDS = Fields()


@dataclass(frozen=True)
class Issue:
    kind: str
    message: str


@dataclass
class View:
    fmt: str  # alpaca | prompt_completion | messages | text | classify | preference | prompt
    key: str  # canonical content: equal keys are exact duplicates
    text: str  # what near-duplicate shingles are taken from
    label: str | None = None
    messages: Messages | None = None  # sft, normalised as training sees them
    parts: dict[str, Any] = field(default_factory=dict)  # pretrain/classify/preference fields


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # CSV/Parquet nulls


def _string(data: dict, key: str, issues: list[Issue], required: bool = True) -> str | None:
    value = data.get(key)
    if _missing(value):
        if required:
            issues.append(Issue("missing_field", f"missing field {key!r}"))
        return None
    if not isinstance(value, str):
        issues.append(Issue("wrong_type", f"field {key!r} must be a string, got {type(value).__name__}"))
        return None
    if required and not value.strip():
        issues.append(Issue("empty_field", f"field {key!r} is empty"))
        return None
    return value


def check_messages(raw: Any, key: str, issues: list[Issue], need_assistant: bool = True,
                   order: bool = True) -> Messages | None:
    """Roles known, content non-empty strings; with `order`, system first only and user / assistant
    alternating from a user turn to an assistant turn (preference parts are fragments: no order check)."""
    if not isinstance(raw, list) or not raw:
        issues.append(Issue("wrong_type", f"{key!r} must be a non-empty list of {{role, content}} objects"))
        return None
    n_before = len(issues)
    out: Messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            issues.append(Issue("bad_message", f"{key}[{i}] must be an object with 'role' and 'content'"))
            continue
        role, content = m["role"], m["content"]
        if not isinstance(role, str) or role not in ROLES:  # a list or dict role is unhashable
            issues.append(Issue("unknown_role", f"{key}[{i}]: unknown role {role!r}; expected one of {sorted(ROLES)}"))
            continue
        if not isinstance(content, str):
            issues.append(Issue("wrong_type", f"{key}[{i}]: content must be a string, got {type(content).__name__}"))
        elif not content.strip():
            issues.append(Issue("empty_field", f"{key}[{i}]: empty {role} content"))
        out.append({"role": role, "content": content if isinstance(content, str) else ""})
    if len(issues) > n_before or not order:
        if not order and need_assistant and not any(m["role"] == "assistant" for m in out):
            issues.append(Issue("no_assistant", f"{key!r} has no assistant message"))
        return out if len(issues) == n_before else None
    expected = "user"
    for i, m in enumerate(out):
        if m["role"] == "system":
            if i != 0:
                issues.append(Issue("turn_order", f"{key}[{i}]: a system message may only come first"))
                return None
            continue
        if m["role"] != expected:
            issues.append(Issue("turn_order", f"{key}[{i}]: {m['role']!r} where {expected!r} was expected "
                                              "(after an optional system message, user and assistant alternate)"))
            return None
        expected = "assistant" if expected == "user" else "user"
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        issues.append(Issue("no_assistant", f"{key!r} has no assistant message, so nothing to learn"))
    elif need_assistant and out[-1]["role"] != "assistant":
        issues.append(Issue("turn_order", f"{key}[{len(out) - 1}]: the conversation ends with an unanswered user turn"))
    return out if len(issues) == n_before else None


def _sft(data: dict, issues: list[Issue]) -> View | None:
    from tuneforge.data.formats import to_messages
    from tuneforge.data.load import Record

    keys = set(data)
    fmt = next((name for name in ("messages", "alpaca", "prompt_completion") if set(FIELDS[name]) <= keys), None)
    if fmt is None:
        expected = "; ".join(f"{n}: {', '.join(f)}" for n, f in FIELDS.items() if n != "text")
        issues.append(Issue("unknown_format", f"cannot tell the sft format from fields {sorted(keys)}; "
                                              f"expected one of ({expected})"))
        return None
    if fmt == "messages":
        if check_messages(data["messages"], "messages", issues) is None:
            return None
    else:
        optional = {"input"} if fmt == "alpaca" else set()
        for key in (*FIELDS[fmt], *optional):
            _string(data, key, issues, required=key not in optional)
        if issues:
            return None
    messages = to_messages(Record(data, "<record>"), fmt)  # the same normalisation training applies
    return View(fmt, json.dumps(messages, ensure_ascii=False), "\n".join(m["content"] for m in messages),
                messages=messages)


def _label(data: dict, key: str, issues: list[Issue]) -> str | None:
    value = data.get(key)
    if _missing(value) or (isinstance(value, str) and not value.strip()):
        issues.append(Issue("missing_field" if _missing(value) else "empty_field", f"missing label {key!r}"))
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        issues.append(Issue("bad_label", f"label {key!r} must be a string or an integer, got {type(value).__name__}"))
        return None
    return str(value).strip()


def _preference_part(data: dict, key: str, issues: list[Issue], required: bool) -> Any:
    value = data.get(key)
    if isinstance(value, list):
        return check_messages(value, key, issues, need_assistant=key != "prompt", order=False)
    return _string(data, key, issues, required)


def _prompt(data: dict, issues: list[Issue]) -> View | None:
    """A prompt the policy completes: a string, or messages whose last turn is the user's."""
    value = data.get("prompt")
    if isinstance(value, list):
        prompt = check_messages(value, "prompt", issues, need_assistant=False)
        if prompt is not None and prompt[-1]["role"] != "user":
            issues.append(Issue("turn_order", f"prompt[{len(prompt) - 1}]: the last message must be the user's "
                                              "(the policy writes the assistant's answer)"))
            return None
    else:
        prompt = _string(data, "prompt", issues)
    if prompt is None or issues:
        return None
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return View("prompt", _canonical(prompt), text, parts={"prompt": prompt})


def _canonical(value: Any) -> str:
    """Whitespace-insensitive form, so "yes" and "yes " count as the same answer."""
    if isinstance(value, str):
        return " ".join(value.split())
    return json.dumps([{**m, "content": " ".join(m["content"].split())} for m in value])


def view_record(data: dict, stage: str, fields: Fields = DEFAULT_FIELDS) -> tuple[View | None, list[Issue]]:
    """(view, issues); the view is None when the record cannot be used for the stage."""
    issues: list[Issue] = []
    kind = KINDS[stage]
    if kind == "sft":
        return _sft(data, issues), issues
    if kind == "pretrain":
        text = _string(data, fields.text, issues)
        return (View("text", text, text, parts={"text": text}) if text is not None else None), issues
    if kind == "classify":
        text = _string(data, fields.text, issues)
        pair = _string(data, fields.text_pair, issues, required=False)
        label = _label(data, fields.label, issues)
        if issues or text is None:
            return None, issues
        content = text if pair is None else f"{text}\n{pair}"
        return View("classify", content, content, label=label, parts={"text": text, "text_pair": pair}), issues
    if kind == "prompt":
        return _prompt(data, issues), issues
    prompt = _preference_part(data, "prompt", issues, required=False)
    chosen = _preference_part(data, "chosen", issues, required=True)
    rejected = _preference_part(data, "rejected", issues, required=True)
    if issues:
        return None, issues
    if _canonical(chosen) == _canonical(rejected):
        issues.append(Issue("chosen_equals_rejected", "chosen and rejected are the same, so there is no preference"))
        return None, issues
    parts = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    key = json.dumps(parts, ensure_ascii=False)
    flat = [p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in parts.values() if p]
    return View("preference", key, "\n".join(flat), parts=parts), issues
