"""Generate the date task deterministically: a date written in words -> ISO 8601 (YYYY-MM-DD).

    python scripts/make_dates_data.py [--out examples/data/dates] [--train 400 --eval 40 --seed 0]

The second task of the adapter-merging example (docs/merge.md; the first is the quickstart's order -> JSON).
Eval rows use years that never appear in train, so passing means the format was learned, not the rows
memorised.
"""

from __future__ import annotations

import random

from make_quickstart_data import cli  # the generators' shared command line (scripts/ is on sys.path)

INSTRUCTION = "Rewrite the date in ISO format (YYYY-MM-DD)."
MONTHS = "January February March April May June July August September October November December".split()
DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
TEMPLATES = ("{month} {day}, {year}", "{day} {month} {year}", "the {nth} of {month} {year}", "{mon}. {day}, {year}",
             "{day}/{m}/{year} (day/month/year)", "{month} {day} {year}")


def ordinal(day: int) -> str:
    return f"{day}{'th' if 10 < day < 14 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


def make_row(rng: random.Random, years: list[int]) -> dict:
    year, m = rng.choice(years), rng.randint(1, 12)
    day = rng.randint(1, DAYS[m - 1])
    text = rng.choice(TEMPLATES).format(month=MONTHS[m - 1], mon=MONTHS[m - 1][:3], day=day, m=m, year=year,
                                      nth=ordinal(day))
    return {"instruction": INSTRUCTION, "input": text, "output": f"{year:04d}-{m:02d}-{day:02d}"}


def generate(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    years = list(range(1950, 2040))
    rng.shuffle(years)
    eval_years, train_years = years[:15], years[15:]
    train = [make_row(rng, train_years) for _ in range(n_train)]
    evals = [make_row(rng, eval_years) for _ in range(n_eval)]
    return train, evals


def main() -> None:
    cli(__doc__.splitlines()[0], generate, "examples/data/dates")


if __name__ == "__main__":
    main()
