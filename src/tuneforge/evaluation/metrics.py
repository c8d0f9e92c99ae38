"""Pure metric functions over (prediction, reference) string pairs, every score in [0, 1].

ROUGE-L comes from `rouge-score` and BLEU / chrF from `sacrebleu` (local libraries, no hub download;
`evaluate.load` would fetch metric scripts from a hub). Both are divided by 100 to share the 0-1 scale.

    compute(["exact_match", "rouge_l"], predictions, references)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from tuneforge.errors import ConfigError


def normalize(text: str) -> str:
    return " ".join(text.strip().split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    if not references:
        return 0.0
    return sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)) / len(references)


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def token_f1(predictions: list[str], references: list[str]) -> float:
    """SQuAD-style bag-of-tokens F1, averaged over pairs."""
    scores = []
    for p, r in zip(predictions, references, strict=True):
        pt, rt = _tokens(p), _tokens(r)
        common = sum((Counter(pt) & Counter(rt)).values())
        if not pt or not rt:
            scores.append(float(pt == rt))
        elif common == 0:
            scores.append(0.0)
        else:
            precision, recall = common / len(pt), common / len(rt)
            scores.append(2 * precision * recall / (precision + recall))
    return sum(scores) / len(scores) if scores else 0.0


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence of words; rouge-score's tokenizer, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenizer, 4-grams, exponential smoothing off) / 100."""
    import sacrebleu

    if not references:
        return 0.0
    return sacrebleu.corpus_bleu(predictions, [references]).score / 100


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (character 6-grams, beta 2) / 100."""
    import sacrebleu

    if not references:
        return 0.0
    return sacrebleu.corpus_chrf(predictions, [references]).score / 100


def tool_call_match(predictions: list[str], references: list[str]) -> float:
    """Share of rows whose generation makes exactly the reference's tool calls: the same function names with
    equal parsed arguments, in order (`<tool_call>{"name", "arguments"}</tool_call>` blocks, data.tools). Where
    the reference makes no call, the generation must make none and equal it (as exact_match)."""
    from tuneforge.data.tools import same_calls

    if not references:
        return 0.0
    return sum(same_calls(p, r) for p, r in zip(predictions, references, strict=True)) / len(references)


METRICS: dict[str, Callable[[list[str], list[str]], float]] = {
    "exact_match": exact_match, "token_f1": token_f1, "rouge_l": rouge_l, "bleu": bleu, "chrf": chrf,
    "tool_call_match": tool_call_match,
}
OPT_IN = ("tool_call_match",)  # only where asked for (--metrics, eval.metrics): it means nothing on plain chat rows


def compute(names: list[str], predictions: list[str], references: list[str]) -> dict[str, float]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown generation metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    return {name: METRICS[name](predictions, references) for name in names}

