"""Generate the RLHF example's data deterministically: short factual questions, answered either in the house
style `Answer: <answer>.` or in free prose (both correct).

    python scripts/make_rlhf_data.py [--out examples/data/rlhf] [--seed 0]

- sft_*.jsonl: questions with answers, half in the house style, half in prose (an SFT set from mixed sources);
- prefs_*.jsonl: the same kind of question with `chosen` in the house style and `rejected` in prose;
- prompts_*.jsonl: questions alone, for PPO, with the `answer` column (for exact-match style rewards).
Each question appears in one file only, and the eval files use questions none of the train files use.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CAPITALS = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Japan": "Tokyo",
            "Egypt": "Cairo", "Canada": "Ottawa", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo",
            "Greece": "Athens", "Poland": "Warsaw", "Portugal": "Lisbon", "Ireland": "Dublin", "Austria": "Vienna",
            "Russia": "Moscow", "China": "Beijing", "India": "New Delhi", "Cuba": "Havana", "Chile": "Santiago",
            "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Belgium": "Brussels",
            "Thailand": "Bangkok", "Turkey": "Ankara", "Mexico": "Mexico City", "Argentina": "Buenos Aires",
            "Hungary": "Budapest", "Vietnam": "Hanoi"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark",
             "open": "closed", "early": "late", "full": "empty", "hard": "soft", "old": "young", "rich": "poor",
             "strong": "weak", "wet": "dry", "loud": "quiet", "tall": "short", "thick": "thin", "clean": "dirty",
             "near": "far", "high": "low", "first": "last", "inside": "outside", "day": "night", "win": "lose"}
COLOURS = {"grass": "green", "snow": "white", "the sky": "blue", "coal": "black", "a banana": "yellow",
           "a tomato": "red", "an orange": "orange", "a lemon": "yellow", "milk": "white", "a carrot": "orange",
           "a strawberry": "red", "a lime": "green", "chocolate": "brown", "a pumpkin": "orange", "soot": "black"}
PLURALS = {"mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "goose": "geese", "man": "men",
           "woman": "women", "person": "people", "leaf": "leaves", "knife": "knives", "wolf": "wolves",
           "box": "boxes", "city": "cities", "baby": "babies", "bus": "buses", "fish": "fish", "sheep": "sheep",
           "cactus": "cacti", "ox": "oxen", "half": "halves"}


def questions(rng: random.Random) -> list[tuple[str, str, str]]:
    """(question, answer, prose answer) for every fact, and a set of sums."""
    out = []
    for country, city in CAPITALS.items():
        out.append((f"What is the capital of {country}?", city, f"The capital of {country} is {city}."))
    for word, opposite in OPPOSITES.items():
        out.append((f"What is the opposite of {word}?", opposite, f"The opposite of {word} is {opposite}."))
    for thing, colour in COLOURS.items():
        subject = thing[0].upper() + thing[1:]
        out.append((f"What color is {thing}?", colour, f"{subject} is usually {colour}."))
    for noun, plural in PLURALS.items():
        out.append((f"What is the plural of {noun}?", plural, f"The plural of {noun} is {plural}."))
    sums = set()
    while len(sums) < 200:
        sums.add((rng.randint(2, 60), rng.randint(2, 40)))
    for a, b in sorted(sums):
        out.append((f"What is {a} plus {b}?", str(a + b), f"{a} plus {b} equals {a + b}."))
    rng.shuffle(out)
    return out


def styled(answer: str) -> str:
    return f"Answer: {answer}."


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="examples/data/rlhf")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    qs = questions(rng)
    n = len(qs)  # 289: split into disjoint groups
    sft, prefs, prompts, held = (qs[: n * 35 // 100], qs[n * 35 // 100 : n * 70 // 100],
                                 qs[n * 70 // 100 : n * 85 // 100], qs[n * 85 // 100 :])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sft_rows = [{"instruction": q, "output": styled(a) if i % 2 == 0 else prose} for i, (q, a, prose) in enumerate(sft)]
    write(out / "sft_train.jsonl", sft_rows[8:])
    write(out / "sft_eval.jsonl", sft_rows[:8])
    pref_rows = [{"prompt": q, "chosen": styled(a), "rejected": prose} for q, a, prose in prefs]
    write(out / "prefs_train.jsonl", pref_rows[12:])
    write(out / "prefs_eval.jsonl", pref_rows[:12] + [{"prompt": q, "chosen": styled(a), "rejected": prose}
                                                         for q, a, prose in held[:12]])
    write(out / "prompts_train.jsonl", [{"prompt": q, "answer": a} for q, a, _ in prompts])
    write(out / "prompts_eval.jsonl", [{"prompt": q, "answer": a} for q, a, _ in held[12:]])
    for f in sorted(out.glob("*.jsonl")):
        print(f"{f}: {sum(1 for _ in f.open())} rows")


if __name__ == "__main__":
    main()
