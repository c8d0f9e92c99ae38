"""Reward sources for ppo / grpo, from the config's `rewards` list: a finished `reward` run (its scalar head
scores prompt + completion rendered and tokenized like its training pairs) or a Python function
`module:function` with TRL's reward-function signature, so functions written for TRL work unchanged:

    fn(prompts: list, completions: list[str], **columns) -> list[float]   # columns: the rows' other fields

    rewards = load_rewards(cfg.ppo.rewards, "ppo.rewards")
    totals = rewards(examples, completions)          # weighted sum per completion, a float32 tensor

Built-in functions (`{function: "tuneforge.rl.rewards:<name>", kwargs: {...}}`; docs/grpo.md lists them):
exact_match (column `answer`), contains (text=...), regex (pattern=...), numeric_match (column=answer,
tolerance=1e-6), length_penalty (target=..., unit=chars|words, per_unit=0.01, floor=-1.0), json_valid
(required_keys=[...], strip_fences=false).
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tuneforge.config.schema import RewardSourceConfig
from tuneforge.errors import ConfigError, UserError

RewardFn = Callable[..., list[float]]


def _norm(text: str) -> str:
    return " ".join(str(text).split()).lower()


def exact_match(prompts: list, completions: list[str], answer: list, **_: Any) -> list[float]:
    """1.0 where the completion equals the row's `answer` (case and whitespace ignored)."""
    return [float(_norm(c) == _norm(a)) for c, a in zip(completions, answer, strict=True)]


def contains(prompts: list, completions: list[str], text: str, **_: Any) -> list[float]:
    """1.0 where the completion contains `text`."""
    return [float(text in c) for c in completions]


def regex(prompts: list, completions: list[str], pattern: str, **_: Any) -> list[float]:
    """1.0 where `pattern` matches the completion (re.search; anchor with ^ / $ for a format check)."""
    compiled = re.compile(pattern, re.DOTALL)
    return [float(bool(compiled.search(c))) for c in completions]


NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")  # 97, -3, 1,000, 2.5 (a trailing "." ends a sentence)


def _number(text: Any) -> float | None:
    found = NUMBER.findall(str(text))
    return float(found[-1].replace(",", "")) if found else None


def numeric_match(prompts: list, completions: list[str], column: str = "answer", tolerance: float = 1e-6,
                  **columns: Any) -> list[float]:
    """1.0 where the last number in the completion is within `tolerance` (absolute) of the number in the row's
    `column`; 0.0 otherwise, also for a completion without a number or a row whose answer is not a number."""
    if column not in columns:
        raise ValueError(f"numeric_match: the rows have no column {column!r} (kwargs column=...)")
    out = []
    for completion, answer in zip(completions, columns[column], strict=True):
        got, want = _number(completion), _number(answer)
        out.append(float(got is not None and want is not None and abs(got - want) <= tolerance))
    return out


def length_penalty(prompts: list, completions: list[str], target: int, unit: str = "chars", per_unit: float = 0.01,
                   floor: float | None = -1.0, **_: Any) -> list[float]:
    """-per_unit for every character (unit: chars) or whitespace-separated word (unit: words) beyond `target`;
    0.0 up to the target; never below `floor` (None: no floor)."""
    if unit not in ("chars", "words"):
        raise ValueError(f"length_penalty: unit must be 'chars' or 'words', got {unit!r}")
    out = []
    for c in completions:
        value = -per_unit * max(0, (len(c) if unit == "chars" else len(c.split())) - target)
        out.append(max(value, floor) if floor is not None else value)
    return [v + 0.0 for v in out]  # -0.0 -> 0.0


FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)


def json_valid(prompts: list, completions: list[str], required_keys: list[str] | None = None,
               strip_fences: bool = False, **_: Any) -> list[float]:
    """1.0 where the completion (surrounding whitespace ignored) parses as JSON; with `required_keys`, only a
    JSON object holding every key counts. strip_fences: a ```json ... ``` fence around it is removed first."""
    out = []
    for c in completions:
        text = c.strip()
        fenced = FENCE.match(text) if strip_fences else None
        try:
            value = json.loads(fenced.group(1) if fenced else text)
        except ValueError:
            out.append(0.0)
            continue
        keys = required_keys or []
        out.append(float(not keys or (isinstance(value, dict) and all(k in value for k in keys))))
    return out


@dataclass
class Source:
    name: str
    weight: float
    score: Callable[[list, list[str]], list[float]]  # (examples, completions) -> scores


def _import_function(spec: str, key: str) -> RewardFn:
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"key {key!r}: cannot import module {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"key {key!r}: module {module_name!r} has no function {attr!r}")
    return fn


def _function_source(source: RewardSourceConfig, key: str) -> Source:
    fn = functools.partial(_import_function(source.function, key), **source.kwargs)

    def score(examples: list, completions: list[str]) -> list[float]:
        names = {name for e in examples for name in e.columns}
        columns = {name: [e.columns.get(name) for e in examples] for name in names}
        try:
            values = fn(prompts=[e.prompt for e in examples], completions=completions, **columns)
        except UserError:
            raise
        except Exception as exc:  # the user's function failed: name it, keep the cause
            raise ConfigError(f"key {key!r}: reward function {source.function} raised "
                              f"{type(exc).__name__}: {exc}") from exc
        return _checked(values, len(completions), f"key {key!r}: reward function {source.function}")

    return Source(source.function, source.weight, score)


def _run_source(source: RewardSourceConfig, key: str) -> Source:
    from tuneforge.rl.reward_model import load_reward_model

    scorer = load_reward_model(source.run)

    def score(examples: list, completions: list[str]) -> list[float]:
        # tokenized as the reward run tokenized its training pairs (its template, data.special_tokens_in_text)
        values = scorer.score_pairs([e.prompt for e in examples], completions)
        return _checked(values, len(completions), f"key {key!r}: reward run {source.run}")

    return Source(f"reward_run:{source.run}", source.weight, score)


def _checked(values: Any, n: int, what: str) -> list[float]:
    if not isinstance(values, (list, tuple)) and not torch.is_tensor(values):
        raise ConfigError(f"{what}: must return a list of numbers, got {type(values).__name__}")
    out = values.tolist() if torch.is_tensor(values) else list(values)
    if len(out) != n:
        raise ConfigError(f"{what}: returned {len(out)} values for {n} completions")
    for v in out:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{what}: returned {v!r}; every reward must be a finite number")
    return [float(v) for v in out]


class Rewards:
    """The weighted sum of the configured sources."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self.names = [s.name for s in sources]

    def breakdown(self, examples: list, completions: list[str]) -> dict[str, torch.Tensor]:
        """Each source's scores, unweighted."""
        return {s.name: torch.tensor(s.score(examples, completions), dtype=torch.float32) for s in self.sources}

    def combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted total of a breakdown."""
        return sum((s.weight * parts[s.name] for s in self.sources), torch.zeros(len(next(iter(parts.values())))))

    def __call__(self, examples: list, completions: list[str]) -> torch.Tensor:
        return self.combine(self.breakdown(examples, completions))


def load_rewards(sources: list[RewardSourceConfig], key: str) -> Rewards:
    """Import functions and load reward runs now, so a bad source fails before training starts."""
    loaded = []
    for i, source in enumerate(sources):
        where = f"{key}[{i}]"
        loaded.append(_function_source(source, where) if source.function else _run_source(source, where))
    names = [s.name for s in loaded]
    for s in loaded:  # two sources with one name (e.g. regex twice): tell them apart in logs
        if names.count(s.name) > 1:
            s.name = f"{s.name}#{loaded.index(s)}"
    return Rewards(loaded)
