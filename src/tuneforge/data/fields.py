"""Field and chat-message checks shared by every record reader: `tuneforge data check`, the check pass
training runs and the example builders all use these, so a record means the same thing everywhere. Each
check appends an `Issue` (kind, message) and carries on, so a check can report every problem of a record;
a reader that needs a value raises the first one (`raise_first`).

    issues: list[Issue] = []
    messages = check_messages(raw, "messages", issues)   # None when unusable
    raise_first(issues, record.where)                    # DataError "file:line: messages[1]: unknown role ..."
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.errors import DataError

Messages = list[dict[str, str]]
ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Issue:
    kind: str  # one of datatools.check.ERRORS
    message: str


def raise_first(issues: list[Issue], where: str) -> None:
    if issues:
        raise DataError(f"{where}: {issues[0].message}")


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # CSV/Parquet nulls


def string_field(data: dict, key: str, issues: list[Issue], required: bool = True) -> str | None:
    """A string field; required ones must be present and non-blank. None when missing or unusable."""
    value = data.get(key)
    if missing(value):
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


def label_field(data: dict, key: str, issues: list[Issue]) -> str | None:
    """A class label: a non-blank string or an integer (not a bool), as a stripped string."""
    value = data.get(key)
    if missing(value) or (isinstance(value, str) and not value.strip()):
        issues.append(Issue("missing_field" if missing(value) else "empty_field", f"missing label {key!r}"))
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        issues.append(Issue("bad_label", f"label {key!r} must be a string or an integer, got {type(value).__name__}"))
        return None
    return str(value).strip()


def check_messages(raw: Any, key: str, issues: list[Issue], need_assistant: bool = True,
                   order: bool = True) -> Messages | None:
    """The one chat-message validator: a non-empty list of {role, content}, roles known, content non-blank
    strings; with `order`, a system message only first and user / assistant alternating from a user turn
    (and ending on an assistant turn when `need_assistant`). Preference parts are fragments: no order check.
    Returns the messages with only role and content, or None when an issue was found."""
    if not isinstance(raw, list) or not raw:
        issues.append(Issue("wrong_type", f"{key!r} must be a non-empty list of {{role, content}} objects"))
        return None
    n_before = len(issues)
    out: Messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            issues.append(Issue("bad_message", f"{key}[{i}] must be an object with string 'role' and 'content'"))
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
    if len(issues) > n_before:
        return None
    if order and not _in_order(out, key, issues):
        return None
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        issues.append(Issue("no_assistant", f"{key!r} has no assistant message, so nothing to learn"))
    elif need_assistant and order and out[-1]["role"] != "assistant":
        issues.append(Issue("turn_order", f"{key}[{len(out) - 1}]: the conversation ends with an unanswered user turn"))
    return out if len(issues) == n_before else None


def _in_order(messages: Messages, key: str, issues: list[Issue]) -> bool:
    expected = "user"
    for i, m in enumerate(messages):
        if m["role"] == "system":
            if i != 0:
                issues.append(Issue("turn_order", f"{key}[{i}]: a system message may only come first"))
                return False
            continue
        if m["role"] != expected:
            issues.append(Issue("turn_order", f"{key}[{i}]: {m['role']!r} where {expected!r} was expected "
                                              "(after an optional system message, user and assistant alternate)"))
            return False
        expected = "assistant" if expected == "user" else "user"
    return True
