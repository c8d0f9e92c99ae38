"""Pure metric functions over (prediction, reference) string pairs."""

from __future__ import annotations

import re
from collections import Counter


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


METRICS = {"exact_match": exact_match, "token_f1": token_f1}


def compute(names: list[str], predictions: list[str], references: list[str]) -> dict[str, float]:
    return {name: METRICS[name](predictions, references) for name in names}
