"""Per-record transformations for `data prepare`: unicode and whitespace normalisation, PII scrubbing
over every text value, and sft format conversion (alpaca <-> prompt_completion <-> messages). Each is
idempotent, so preparing prepared data changes nothing.

    data = normalize_value(data); data, counts = scrub_value(data, skip={"label", "role"})
    data = convert(data, "alpaca", "messages")
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any

from tuneforge.datatools.pii import scrub

SFT_FORMATS = ("alpaca", "prompt_completion", "messages")
# Invisible characters NFKC keeps: zero-width space / joiners, BOM, soft hyphen, word joiner.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INNER_SPACE = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_BLANK_LINES = re.compile(r"\n{3,}")


class NotConvertible(ValueError):
    pass


def normalize_text(text: str) -> str:
    """NFKC; no invisible or control characters; \\n line ends; runs of spaces inside a line become one
    (indentation is kept, for code); no trailing spaces; at most one blank line in a row; stripped."""
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [_INNER_SPACE.sub(" ", line).rstrip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def normalize_value(value: Any) -> Any:
    if isinstance(value, str):
        return normalize_text(value)
    if isinstance(value, list):
        return [normalize_value(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize_value(v) for k, v in value.items()}
    return value


def scrub_value(value: Any, skip: frozenset[str] | set[str], kinds: set[str] | None = None,
                counts: Counter | None = None) -> tuple[Any, Counter]:
    """Scrub every string, except the values of keys in `skip` (labels, roles)."""
    counts = Counter() if counts is None else counts
    if isinstance(value, str):
        text, found = scrub(value, kinds)
        counts.update(found)
        return text, counts
    if isinstance(value, list):
        return [scrub_value(v, skip, kinds, counts)[0] for v in value], counts
    if isinstance(value, dict):
        return {k: (v if k in skip else scrub_value(v, skip, kinds, counts)[0]) for k, v in value.items()}, counts
    return value, counts


def _single_turn(messages: list[dict]) -> tuple[str, str]:
    roles = [m["role"] for m in messages]
    if roles != ["user", "assistant"]:
        raise NotConvertible(f"only a single user/assistant exchange converts; roles here: {roles}")
    return messages[0]["content"], messages[1]["content"]


def convert(data: dict, fmt: str, to: str) -> dict:
    """One validated sft record from `fmt` to `to`; only the target format's fields are kept."""
    if fmt == to:
        return data
    if fmt == "alpaca":
        extra = data.get("input") or ""
        prompt, answer = (f"{data['instruction']}\n\n{extra}" if extra.strip() else data["instruction"]), data["output"]
    elif fmt == "prompt_completion":
        prompt, answer = data["prompt"], data["completion"]
    else:
        prompt, answer = _single_turn(data["messages"])
    if to == "alpaca":
        return {"instruction": prompt, "input": "", "output": answer}
    if to == "prompt_completion":
        return {"prompt": prompt, "completion": answer}
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
