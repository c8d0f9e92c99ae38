"""One validator per record kind (stage_info(stage).records: sft, pretrain, classify, preference, prompt).
Each checks a record and reduces it to a `View` (the content that counts for duplicates, the label, the chat
messages, the normalised fields), returning every problem it found. `tuneforge data check`, the check pass
every stage runs before training and the example builders all call these.

    view, issues = view_record(record.data, stage_info(cfg.stage).records, fields_of(cfg))
    view = require(record, "prompt")      # the view, or a DataError naming record.where and the first issue

sft: alpaca / prompt_completion / messages; pretrain: text; classify: text, label, text_pair?; preference
(reward, dpo, orpo, simpo, cpo): prompt?, chosen, rejected, strings or chat messages; prompt (ppo, grpo): a
string or chat messages ending on a user turn (other fields go to reward functions); kto: prompt?, completion,
label true / false.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneforge.config.schema import Config
from tuneforge.data.fields import Issue, Messages, check_messages, label_field, missing, raise_first, string_field
from tuneforge.data.formats import find_format, sft_messages
from tuneforge.data.load import Record
from tuneforge.data.tools import row_tools


@dataclass(frozen=True)
class Fields:
    """Column names and format; classify and pretrain take theirs from the config (data.text_field, ...)."""

    text: str = "text"
    label: str = "label"
    text_pair: str = "text_pair"
    text_pair_required: bool = False  # data.text_pair_field set: every record needs the second text
    sft_format: str = "auto"  # data.format


DEFAULT_FIELDS = Fields()


def fields_of(cfg: Config) -> Fields:
    """The fields a run reads (the data check of a training run validates exactly these)."""
    return Fields(text=cfg.data.text_field, label=cfg.data.label_field,
                  text_pair=cfg.data.text_pair_field or "text_pair", text_pair_required=bool(cfg.data.text_pair_field),
                  sft_format=cfg.data.format)


@dataclass
class View:
    fmt: str  # alpaca | prompt_completion | messages | text | classify | preference | prompt
    key: str  # canonical content: equal keys are exact duplicates
    text: str  # what near-duplicate shingles are taken from
    label: str | None = None
    messages: Messages | None = None  # sft, normalised as training sees them
    parts: dict[str, Any] = field(default_factory=dict)  # pretrain/classify/preference/prompt fields


def to_conversation(prompt: str | Messages | None, response: str | Messages) -> Messages:
    """prompt + response as chat messages: a string prompt is the user turn, a string response the assistant's."""
    before = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt or [])
    after = [{"role": "assistant", "content": response}] if isinstance(response, str) else response
    return before + after


def normalised(messages: Messages) -> list[tuple[str, str]]:
    return [(m["role"], " ".join(m["content"].split())) for m in messages]


def same_responses(prompt: str | Messages | None, chosen: str | Messages, rejected: str | Messages) -> bool:
    """chosen == rejected up to whitespace (a string answer equals the same single assistant message)."""
    return normalised(to_conversation(prompt, chosen)) == normalised(to_conversation(prompt, rejected))


def _sft(data: dict, fields: Fields, issues: list[Issue]) -> View | None:
    fmt = fields.sft_format if fields.sft_format != "auto" else find_format(data, issues)
    messages = sft_messages(data, fmt, issues) if fmt else None
    if messages is None:
        return None
    tools = row_tools(data)  # a tool row's function list, rendered with the messages
    key = json.dumps([tools, messages] if tools else messages, ensure_ascii=False)
    return View(fmt, key, "\n".join(m["content"] for m in messages), messages=messages,
                parts={"tools": tools} if tools else {})


def _pretrain(data: dict, fields: Fields, issues: list[Issue]) -> View | None:
    text = string_field(data, fields.text, issues)
    return View("text", text, text, parts={"text": text}) if text is not None else None


def _classify(data: dict, fields: Fields, issues: list[Issue]) -> View | None:
    text = string_field(data, fields.text, issues)
    pair = string_field(data, fields.text_pair, issues, required=fields.text_pair_required)
    label = label_field(data, fields.label, issues)
    if issues or text is None:
        return None
    content = text if pair is None else f"{text}\n{pair}"
    return View("classify", content, content, label=label, parts={"text": text, "text_pair": pair})


def preference_part(data: dict, key: str, issues: list[Issue], required: bool) -> str | Messages | None:
    """`prompt`, `chosen` or `rejected`: a string or a list of chat messages (a fragment: no turn order)."""
    value = data.get(key)
    if isinstance(value, list):
        return check_messages(value, key, issues, need_assistant=key != "prompt", order=False)
    if not missing(value) and not isinstance(value, str):
        issues.append(Issue("wrong_type", f"field {key!r} must be a string or a list of {{role, content}} messages, "
                                          f"got {type(value).__name__}"))
        return None
    return string_field(data, key, issues, required)


def _preference(data: dict, fields: Fields, issues: list[Issue]) -> View | None:
    prompt = preference_part(data, "prompt", issues, required=False)
    chosen = preference_part(data, "chosen", issues, required=True)
    rejected = preference_part(data, "rejected", issues, required=True)
    if issues or chosen is None or rejected is None:
        return None
    if same_responses(prompt, chosen, rejected):
        issues.append(Issue("chosen_equals_rejected", "chosen and rejected are the same, so there is no preference"))
        return None
    parts = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    flat = [p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in parts.values() if p]
    return View("preference", json.dumps(parts, ensure_ascii=False), "\n".join(flat), parts=parts)


def _kto(data: dict, fields: Fields, issues: list[Issue]) -> View | None:
    """A kto row: prompt?, completion (a string or messages with an assistant turn), a boolean label."""
    prompt = preference_part(data, "prompt", issues, required=False)
    completion = preference_part(data, "completion", issues, required=True)
    label = data.get(fields.label)
    if missing(label):
        issues.append(Issue("missing_field", f"missing field {fields.label!r} (true: a desirable completion, "
                                             "false: an undesirable one)"))
    elif not isinstance(label, bool):
        issues.append(Issue("wrong_type", f"field {fields.label!r} must be true or false (a JSON boolean), "
                                          f"got {type(label).__name__} {label!r}"))
    if issues or completion is None:
        return None
    messages = to_conversation(prompt, completion)  # data check counts its tokens as sft renders it
    parts = {"prompt": prompt, "completion": completion, "label": label}
    key = json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False)  # a label conflict shows
    return View("kto", key, "\n".join(m["content"] for m in messages), label=str(label).lower(), messages=messages,
                parts=parts)


def _prompt(data: dict, fields: Fields, issues: list[Issue]) -> View | None:
    """A prompt the policy completes: a string, or messages whose last turn is the user's."""
    value = data.get("prompt")
    if isinstance(value, list):
        prompt = check_messages(value, "prompt", issues, need_assistant=False)
        if prompt is not None and prompt[-1]["role"] != "user":
            issues.append(Issue("turn_order", f"prompt[{len(prompt) - 1}]: the last message must be the user's "
                                              "(the policy writes the assistant's answer)"))
            return None
    else:
        prompt = string_field(data, "prompt", issues)
    if prompt is None or issues:
        return None
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return View("prompt", _canonical(prompt), text, parts={"prompt": prompt})


def _canonical(value: str | Messages) -> str:
    """Whitespace-insensitive form, so "yes" and "yes " count as the same prompt."""
    if isinstance(value, str):
        return " ".join(value.split())
    return json.dumps([{**m, "content": " ".join(m["content"].split())} for m in value])


VALIDATORS: dict[str, Callable[[dict, Fields, list[Issue]], View | None]] = {
    "sft": _sft, "pretrain": _pretrain, "classify": _classify, "preference": _preference, "prompt": _prompt,
    "kto": _kto,
}


def view_record(data: dict, kind: str, fields: Fields = DEFAULT_FIELDS) -> tuple[View | None, list[Issue]]:
    """(view, issues) of a record of `kind` (stage_info(stage).records); the view is None when unusable."""
    issues: list[Issue] = []
    view = VALIDATORS[kind](data, fields, issues)
    return (view if not issues else None), issues


def require(record: Record, kind: str, fields: Fields = DEFAULT_FIELDS) -> View:
    """The record's view, or a DataError naming the record and its first issue (for readers of records
    that may not have been through the check pass: eval sets, predict inputs)."""
    view, issues = view_record(record.data, kind, fields)
    raise_first(issues, record.where)
    assert view is not None
    return view
