"""Generate the sentiment example deterministically: short product reviews -> negative / neutral / positive.

    python scripts/make_sentiment_data.py [--out examples/data/sentiment] [--train 900 --eval 150 --seed 0]
    python scripts/make_sentiment_data.py --baseline examples/data/sentiment/eval.jsonl   # keyword baseline

Reviews are built from templates and word lists. The label follows rules a keyword counter gets wrong:
a negated word flips its polarity ("not sturdy" is negative, "never flimsy" positive), and after "but"
or "although" the last clause decides ("the screen is bright, but the battery is awful" is negative).
Reviews that only state facts are neutral. Eval rows use products never seen in training.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

POSITIVE = ("great excellent sturdy reliable comfortable quiet fast bright solid lovely superb handy elegant "
            "durable responsive crisp smooth flawless generous pleasant").split()
NEGATIVE = ("awful terrible flimsy unreliable uncomfortable noisy slow dim cheap broken useless clunky fragile "
            "sluggish blurry scratchy faulty disappointing leaky wobbly").split()
ASPECTS = ("battery screen handle lid strap zipper button cable case sound grip hinge finish stand charger "
           "display motor fabric cushion speaker").split()
TRAIN_PRODUCTS = ("headphones kettle backpack lamp blender keyboard mouse speaker tent jacket suitcase drill "
                  "toaster umbrella camera monitor router printer watch chair").split()
EVAL_PRODUCTS = "thermos scooter projector microwave stroller".split()
NEUTRAL = (
    "The {product} arrived on {day}.", "I bought the {product} for my {person}.", "The {product} comes in {color}.",
    "The box of the {product} had a manual in {language}.", "I have used the {product} for {n} weeks.",
    "The {product} weighs about {n} kilograms.", "The {aspect} of the {product} is {color}.",
)
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
PEOPLE = "sister brother father mother friend neighbour office son daughter".split()
COLORS = "black white grey blue green red silver".split()
LANGUAGES = "English French German Spanish Italian Dutch".split()
NEGATORS = ("not", "never", "hardly", "not at all")
CONTRASTS = (", but", ", although")


def _clause(rng: random.Random, product: str, polarity: int, negate: bool) -> str:
    """A clause whose *meaning* has `polarity`; with `negate`, the opposite word is negated."""
    word_polarity = -polarity if negate else polarity
    word = rng.choice(POSITIVE if word_polarity > 0 else NEGATIVE)
    aspect = rng.choice(ASPECTS)
    if negate:
        return f"the {aspect} is {rng.choice(NEGATORS)} {word}"
    return rng.choice((f"the {aspect} is {word}", f"the {product} feels {word}", f"a {word} {aspect}"))


def _neutral(rng: random.Random, product: str) -> str:
    return rng.choice(NEUTRAL).format(product=product, day=rng.choice(DAYS), person=rng.choice(PEOPLE),
                                      color=rng.choice(COLORS), language=rng.choice(LANGUAGES),
                                      n=rng.randint(2, 9), aspect=rng.choice(ASPECTS))


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def review(rng: random.Random, products: list[str]) -> dict:
    product = rng.choice(products)
    label = rng.choice((-1, 0, 1))
    if label == 0:
        text = _neutral(rng, product) + (" " + _neutral(rng, product) if rng.random() < 0.5 else "")
        return {"text": text, "label": "neutral"}
    kind = rng.choice(("plain", "negated", "contrast", "contrast"))
    if kind == "plain":
        text = _sentence(_clause(rng, product, label, False))
    elif kind == "negated":
        text = _sentence(_clause(rng, product, label, True))
    else:  # the clause after the contrast word decides; the first says the opposite
        first = _clause(rng, product, -label, rng.random() < 0.3)
        second = _clause(rng, product, label, rng.random() < 0.3)
        text = _sentence(f"{first}{rng.choice(CONTRASTS)} {second}")
    if rng.random() < 0.4:
        text = _neutral(rng, product) + " " + text
    return {"text": text, "label": "positive" if label > 0 else "negative"}


def keyword_label(text: str) -> str:
    """The baseline: count positive minus negative words, ignoring negation and clause order."""
    words = [w.strip(".,").lower() for w in text.split()]
    score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def keyword_accuracy(path: Path) -> float:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sum(keyword_label(r["text"]) == r["label"] for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/data/sentiment")
    parser.add_argument("--train", type=int, default=900)
    parser.add_argument("--eval", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", help="print the keyword baseline's accuracy on this JSONL and exit")
    args = parser.parse_args()
    if args.baseline:
        print(f"keyword baseline accuracy on {args.baseline}: {keyword_accuracy(Path(args.baseline)):.4f}")
        return
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, n, products in (("train", args.train, TRAIN_PRODUCTS), ("eval", args.eval, EVAL_PRODUCTS)):
        rows, seen = [], set()
        while len(rows) < n:  # no duplicate texts (`tuneforge data check` would flag them)
            row = review(rng, products)
            if row["text"] not in seen:
                seen.add(row["text"])
                rows.append(row)
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {out / name}.jsonl ({n} rows, keyword baseline {keyword_accuracy(out / f'{name}.jsonl'):.3f})")


if __name__ == "__main__":
    main()
