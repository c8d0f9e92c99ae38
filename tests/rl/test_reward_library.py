"""The built-in reward functions of tuneforge.rl.rewards on hand-written completions, with exact expected values,
and each one used as a config source `{function: tuneforge.rl.rewards:<name>, kwargs: {...}}`."""

from __future__ import annotations

import pytest

from tuneforge.config.schema import RewardSourceConfig
from tuneforge.errors import ConfigError
from tuneforge.rl import rewards as R
from tuneforge.rl.prompts import PromptExample


def test_exact_match_contains_regex():
    assert R.exact_match([], ["  Tokyo ", "tokyo city", "TOKYO"], answer=["tokyo", "Tokyo", "Tokyo"]) == [1, 0, 1]
    assert R.contains([], ["Answer: 4", "4", ""], text="Answer:") == [1.0, 0.0, 0.0]
    assert R.regex([], ["Answer: 4.", "answer: 4.", "Answer: 4.\nmore"], pattern=r"^Answer: \d+\.$") == [1, 0, 0]


def test_numeric_match_takes_the_last_number():
    completions = ["41 plus 33 is 74.", "74 is wrong, it is 75", "It is 1,000.", "about 2.50", "-3", "no idea",
                   "74", "74"]
    answers = ["74", "74", "1000", "2.5", "-3", "5", "Tokyo", 74]
    assert R.numeric_match([], completions, answer=answers) == [1, 0, 1, 1, 1, 0, 0, 1]


def test_numeric_match_tolerance_and_column():
    got = R.numeric_match([], ["3.14", "3.2", "3"], column="pi", tolerance=0.05, pi=["3.1416"] * 3)
    assert got == [1.0, 0.0, 0.0]
    assert R.numeric_match([], ["3"], tolerance=0.0, answer=["3.0"]) == [1.0]
    with pytest.raises(ValueError, match="no column 'answer'"):
        R.numeric_match([], ["3"], target=["3"])


def test_length_penalty():
    texts = ["short", "x" * 10, "x" * 13, "x" * 200]
    assert R.length_penalty([], texts, target=10, per_unit=0.25) == [0.0, 0.0, -0.75, -1.0]  # floor -1
    assert R.length_penalty([], ["x" * 200], target=10, per_unit=0.25, floor=None) == [-47.5]
    words = ["one two three", "one  two three four five\nsix"]
    assert R.length_penalty([], words, target=3, unit="words", per_unit=0.5, floor=-10) == [0.0, -1.5]
    with pytest.raises(ValueError, match="unit must be"):
        R.length_penalty([], ["x"], target=1, unit="tokens")


def test_json_valid():
    texts = ['{"name": "Ada", "age": 36}', ' [1, 2] ', '{"name": "Ada"', 'Sure! {"name": "Ada"}', '"text"',
             '```json\n{"name": "Ada"}\n```']
    assert R.json_valid([], texts) == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert R.json_valid([], texts, strip_fences=True) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert R.json_valid([], texts, required_keys=["name", "age"]) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert R.json_valid([], texts, required_keys=["name"], strip_fences=True) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def example(answer: str) -> PromptExample:
    return PromptExample("q", "q", [1], {"answer": answer}, "f:1")


@pytest.mark.parametrize("name,kwargs,completions,expected", [
    ("numeric_match", {"tolerance": 0.5}, ["it is 7.4", "8"], [1.0, 0.0]),
    ("length_penalty", {"target": 2, "per_unit": 0.5}, ["abc", "ab"], [-0.5, 0.0]),
    ("json_valid", {"required_keys": ["a"]}, ['{"a": 1}', "{}"], [1.0, 0.0]),
    ("exact_match", {}, ["7", "7.4 "], [1.0, 1.0]),
    ("regex", {"pattern": r"\d"}, ["7", "x"], [1.0, 0.0]),
])
def test_usable_as_config_sources(name, kwargs, completions, expected):
    source = RewardSourceConfig(function=f"tuneforge.rl.rewards:{name}", kwargs=kwargs, weight=2.0)
    rewards = R.load_rewards([source], "grpo.rewards")
    rows = [example("7"), example("7.4")]
    assert rewards.breakdown(rows, completions)[f"tuneforge.rl.rewards:{name}"].tolist() == expected
    assert rewards(rows, completions).tolist() == [2 * v for v in expected]


def test_a_bad_kwarg_names_the_key():
    source = RewardSourceConfig(function="tuneforge.rl.rewards:length_penalty", kwargs={"target": 3, "unit": "x"})
    with pytest.raises(ConfigError, match=r"grpo.rewards\[0\].*unit must be 'chars' or 'words'"):
        R.load_rewards([source], "grpo.rewards")([example("1")], ["abc"])
