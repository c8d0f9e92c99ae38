"""Generate the preference example's data deterministically: a correct vs a wrong answer to a capital-city or
a sum question, as pairs (dpo, orpo, simpo, cpo) and as kto rows (chosen -> label true, rejected -> false).

    python scripts/make_preference_data.py [--out examples/data/preference] [--train 96 --eval 40 --seed 0]

Writes train.jsonl / eval.jsonl (pairs: prompt, chosen, rejected) and kto_train.jsonl / kto_eval.jsonl (the same
pairs as rows: prompt, completion, label, each pair's two rows side by side). Eval countries and sums never
appear in train, e.g. "What is the capital of Poland?" -> "The capital of Poland is Warsaw." vs "... Vienna."
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from make_quickstart_data import write  # the generators' shared writer (scripts/ is on sys.path)

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Poland": "Warsaw", "Austria": "Vienna", "Hungary": "Budapest", "Greece": "Athens", "Sweden": "Stockholm",
    "Norway": "Oslo", "Finland": "Helsinki", "Denmark": "Copenhagen", "Ireland": "Dublin", "Belgium": "Brussels",
    "Netherlands": "Amsterdam", "Czechia": "Prague", "Romania": "Bucharest", "Bulgaria": "Sofia",
    "Croatia": "Zagreb", "Serbia": "Belgrade", "Ukraine": "Kyiv", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Peru": "Lima", "Chile": "Santiago", "Argentina": "Buenos Aires", "Colombia": "Bogota", "Cuba": "Havana",
    "Mexico": "Mexico City", "Canada": "Ottawa", "Australia": "Canberra", "Turkey": "Ankara", "Iran": "Tehran",
    "Russia": "Moscow",
}


def capital_pair(rng: random.Random, country: str) -> dict:
    wrong = rng.choice([c for k, c in CAPITALS.items() if k != country])
    return {"prompt": f"What is the capital of {country}?", "chosen": f"The capital of {country} is "
            f"{CAPITALS[country]}.", "rejected": f"The capital of {country} is {wrong}."}


def sum_pair(rng: random.Random, a: int, b: int) -> dict:
    wrong = a + b + rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])
    return {"prompt": f"What is {a} + {b}?", "chosen": f"{a} + {b} = {a + b}.", "rejected": f"{a} + {b} = {wrong}."}


def generate(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Half capital questions (countries split between train and eval), half sums (operand pairs split)."""
    rng = random.Random(seed)
    countries = sorted(CAPITALS)
    rng.shuffle(countries)
    eval_countries, train_countries = countries[:12], countries[12:]
    sums = [(a, b) for a in range(11, 60) for b in range(11, 60)]
    rng.shuffle(sums)
    eval_sums, train_sums = sums[: n_eval], sums[n_eval : n_eval + n_train]

    def rows(n: int, names: list[str], operands: list[tuple[int, int]]) -> list[dict]:
        return [capital_pair(rng, names[i % len(names)]) if i % 2 == 0 else sum_pair(rng, *operands[i])
                for i in range(n)]

    return rows(n_train, train_countries, train_sums), rows(n_eval, eval_countries, eval_sums)


def kto_rows(pairs: list[dict]) -> list[dict]:
    """chosen -> true, rejected -> false (tuneforge.data.kto_rows.kto_rows_of_pairs does the same)."""
    return [{"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
            for p in pairs for key in ("chosen", "rejected")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/data/preference")
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--eval", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, evals = generate(args.train, args.eval, args.seed)
    out = Path(args.out)
    for name, rows in (("train", train), ("eval", evals), ("kto_train", kto_rows(train)),
                       ("kto_eval", kto_rows(evals))):
        write(rows, out / f"{name}.jsonl")
    print(f"wrote {len(train)} train and {len(evals)} eval pairs (and their kto rows) to {out}")


if __name__ == "__main__":
    main()
