"""Generation metrics against values worked out by hand (ROUGE-L from the longest common subsequence, BLEU
from n-gram precisions and the brevity penalty), and their edge cases."""

import math

import pytest

from tuneforge.errors import ConfigError
from tuneforge.evaluation.metrics import METRICS, bleu, chrf, compute, rouge_l


def test_rouge_l_is_lcs_f_measure():
    # LCS("the cat sat", "the cat on the mat") = "the cat": P = 2/3, R = 2/5, F = 2PR / (P + R) = 0.5
    assert rouge_l(["the cat sat"], ["the cat on the mat"]) == pytest.approx(0.5)
    # averaged over pairs: (1 + 0) / 2
    assert rouge_l(["a b", "x"], ["a b", "y"]) == pytest.approx(0.5)


def test_bleu_brevity_penalty_when_all_ngrams_match():
    # every 1..4-gram of the 6-word prediction is in the 7-word reference: precisions 1, BP = exp(1 - 7/6)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat today"]) == pytest.approx(math.exp(-1 / 6),
                                                                                                abs=1e-6)


def test_identical_and_disjoint_bounds():
    preds = ['{"item": "lamp", "qty": 3}', "Paris is the capital of France."]
    for name, fn in METRICS.items():
        assert fn(preds, preds) == pytest.approx(1.0), name
        assert 0.0 <= fn(preds, ["zzz qqq", "www"]) < 0.2, name
    assert chrf(["abc"], ["abd"]) < chrf(["abc"], ["abc"])


def test_empty_inputs_and_unknown_names():
    assert compute(list(METRICS), [], []) == {name: 0.0 for name in METRICS}
    with pytest.raises(ConfigError, match="unknown generation metric.*bleurt"):
        compute(["bleu", "bleurt"], ["a"], ["a"])
