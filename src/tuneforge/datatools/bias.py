"""Counterfactual bias probes, scored before and after a fine-tune, so a tune that adds bias shows.

A probe is the same sentence twice, once with the terms of one group and once with the other's
(word lists in datatools/probes/*.json, or your own file). Language models: the gap in log-likelihood
of the continuation given the prompt, group A minus group B, in nats. Classifiers: how often the
predicted label flips and how far the probabilities move (total variation) between the two versions.

    tuneforge data bias runs/quickstart --probe builtin
    tuneforge data bias runs/sentiment --probe my_probes.json --output bias/
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.errors import DataError


@dataclass
class Probe:
    name: str
    groups: tuple[str, str]
    items: list[tuple[str, str]]  # (prompt, continuation) written with group A's terms
    swapped: list[tuple[str, str]]  # the same with group B's terms
    description: str = ""


def _swapper(pairs: list[list[str]]):
    table = {a.lower(): b for a, b in pairs}
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(a) for a in sorted(table, key=len, reverse=True))
                         + r")(?![\w-])", re.IGNORECASE)

    def keep_case(m: re.Match) -> str:
        word, new = m.group(), table[m.group().lower()]
        if word.isupper() and len(word) > 1:
            return new.upper()
        return new[:1].upper() + new[1:] if word[:1].isupper() else new

    return lambda text: pattern.sub(keep_case, text)


def load_probe(path: str | Path) -> Probe:
    """Validate a probe file: {name, groups: [A, B], swaps: [[a, b], ...], items: [{prompt, continuation}]}."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the probe file ({exc})") from None
    for key, kind in (("groups", list), ("swaps", list), ("items", list)):
        if not isinstance(raw.get(key), kind) or not raw[key]:
            raise DataError(f"{path}: key {key!r} must be a non-empty list")
    if len(raw["groups"]) != 2:
        raise DataError(f"{path}: key 'groups' must name exactly two groups")
    for i, pair in enumerate(raw["swaps"]):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(w, str) and w for w in pair)):
            raise DataError(f"{path}: swaps[{i}] must be a pair of words [group A, group B]")
    swap = _swapper(raw["swaps"])
    items, swapped = [], []
    for i, item in enumerate(raw["items"]):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                 for k in ("prompt", "continuation")):
            raise DataError(f"{path}: items[{i}] must have non-empty string 'prompt' and 'continuation'")
        pair = (item["prompt"].strip(), item["continuation"].strip())
        other = (swap(pair[0]), swap(pair[1]))
        if other == pair:
            raise DataError(f"{path}: items[{i}] contains no word from 'swaps', so it has no counterfactual")
        items.append(pair)
        swapped.append(other)
    return Probe(str(raw.get("name") or path.stem), tuple(raw["groups"]), items, swapped, raw.get("description", ""))


def builtin_probes() -> list[Path]:
    folder = resources.files("tuneforge.datatools") / "probes"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json"))


def load_probes(spec: list[str]) -> list[Probe]:
    paths: list[Path] = []
    for s in spec:
        paths += builtin_probes() if s == "builtin" else [Path(s)]
    return [load_probe(p) for p in paths]


# --- language models -------------------------------------------------------------------------------

def _encode(tokenizer, prompt: str, continuation: str) -> tuple[list[int], int]:
    """(ids, number of prompt ids): the continuation is tokenized as it follows the prompt."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token",
                                                                                      False) else []
    head = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = bos + tokenizer(f"{prompt} {continuation}", add_special_tokens=False)["input_ids"]
    if full[: len(head)] != head:  # the join merged tokens across the boundary: tokenize apart
        full = head + tokenizer(f" {continuation}", add_special_tokens=False)["input_ids"]
    return full, len(head)


def continuation_logprobs(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16) -> np.ndarray:
    """Sum of log p(continuation token | everything before it), per (prompt, continuation)."""
    import torch

    encoded = [_encode(tokenizer, p, c) for p, c in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.zeros(len(pairs))
    model.eval()
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in batch])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch])
        ids, mask = ids.to(model.device), mask.to(model.device)  # --device: the model's, e.g. cuda:0
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        for row, (x, n_prompt) in enumerate(batch):
            out[start + row] = float(logp[row, n_prompt - 1 : len(x) - 1].sum())
    return out


def score_lm(model, tokenizer, probe: Probe) -> dict[str, Any]:
    gaps = continuation_logprobs(model, tokenizer, probe.items) - continuation_logprobs(model, tokenizer, probe.swapped)
    return {"items": len(gaps), "mean_gap": float(gaps.mean()), "mean_abs_gap": float(np.abs(gaps).mean()),
            "prefers_a": float((gaps > 0).mean()), "gaps": [round(float(g), 4) for g in gaps]}


# --- classifiers -----------------------------------------------------------------------------------

def _texts(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{p} {c}" for p, c in pairs]


def score_classifier(clf, probe: Probe) -> dict[str, Any]:
    """clf: `labels` and `predict_proba(texts) -> [n, n_labels]` (tuneforge.predict.Classifier)."""
    a = np.asarray(clf.predict_proba(_texts(probe.items)))
    b = np.asarray(clf.predict_proba(_texts(probe.swapped)))
    flips = a.argmax(1) != b.argmax(1)
    shift = 0.5 * np.abs(a - b).sum(1)  # total variation distance between the two predicted distributions
    return {"items": len(a), "flip_rate": float(flips.mean()), "mean_shift": float(shift.mean()),
            "max_shift": float(shift.max()), "flips": [i for i, f in enumerate(flips) if f],
            "shifts": [round(float(s), 4) for s in shift]}


METRIC = {"lm": ("mean_gap", "mean_abs_gap", "prefers_a"), "classifier": ("flip_rate", "mean_shift", "max_shift")}


def grew(kind: str, base: dict, tuned: dict, tolerance: float) -> bool:
    """Did the tune add bias? LM: |mean gap| up by more than `tolerance` nats; classifier: flip rate or
    mean probability shift up by more than `tolerance`."""
    if kind == "lm":
        return abs(tuned["mean_gap"]) - abs(base["mean_gap"]) > tolerance
    return max(tuned["flip_rate"] - base["flip_rate"], tuned["mean_shift"] - base["mean_shift"]) > tolerance
