"""Reward sources for ppo / grpo, from the config's `rewards` list: a finished `reward` run (its scalar head
scores prompt + completion rendered and tokenized like its training pairs) or a Python function
`module:function` with TRL's reward-function signature, so functions written for TRL work unchanged:

    fn(prompts: list, completions: list[str], **columns) -> list[float]   # columns: the rows' other fields

    rewards = load_rewards(cfg.ppo.rewards, "ppo.rewards")
    totals = rewards(examples, completions)          # weighted sum per completion, a float32 tensor

Built-in functions: `tuneforge.rl.rewards:exact_match` (column `answer`), `:contains` (kwargs text=...),
`:regex` (kwargs pattern=...).
"""

from __future__ import annotations

import functools
import importlib
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
