"""Generate the quickstart data set deterministically: sentences about orders -> JSON with fixed keys.

    python scripts/make_quickstart_data.py [--out examples/data/quickstart] [--train 400 --eval 40 --seed 0]

The embedded SmolLM2-135M-Instruct answers this in prose or with the wrong keys before tuning; the
task is to reply with exactly `{"name": ..., "item": ..., "quantity": ..., "city": ...}`.
Eval rows use names, items and cities that never appear in train, so passing means the format was
learned, not the rows memorised.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

INSTRUCTION = "Extract the order from the sentence as JSON with the keys name, item, quantity and city."
NAMES = ("Maria Liam Olivia Noah Emma Lucas Ava Mateo Sofia Elias Mia Hugo Lena Omar Yuki Ines Tariq Nora Felix "
         "Chloe Arjun Zoe Pablo Hana Ivan Leila Samir Greta Tomas Amara Jonas Priya Diego Freya Kenji Alma Rafael "
         "Ingrid Malik Clara Viktor Sana Bruno Elif Marco Anya Leon Rosa Emil Dara Aiko Bjorn Carmen Dmitri Esther "
         "Fatima Gustav Helena Ismael Jana Kofi Lucia Magnus Nadia Oskar Paula Quentin Rania Stefan Tamara Umar "
         "Vera Wilhelm Ximena Yosef Zara Adele Boris Celine Dario Elena Farid Gloria Hector Irina Jorge Katya Lars "
         "Mirela Nikolai Odette Pedro Renata Sergei Tilda Ugo Valeria Wanda Yara Zeno Agnes Bastian Cora Dante "
         "Edith Franco Giulia Hamid Isolde Joaquin").split()
ITEMS = ("lamps chairs notebooks candles mugs pillows blankets umbrellas backpacks kettles towels plates "
         "mirrors clocks baskets scarves gloves bottles pencils markers cushions rugs vases frames jars "
         "helmets tents lanterns shovels ladders speakers cables routers monitors keyboards headphones "
         "batteries printers tablets cameras teapots spoons forks knives bowls glasses napkins aprons sponges "
         "brooms buckets hammers wrenches drills saws nails screws hinges locks keys wallets belts hats caps "
         "boots sandals sneakers socks jackets coats sweaters shirts dresses skirts ties watches rings bracelets "
         "necklaces earrings brushes combs razors soaps candlesticks easels canvases crayons erasers rulers "
         "staplers folders binders envelopes stamps maps globes compasses telescopes microscopes thermometers "
         "kites balloons puzzles dice marbles yoyos drums flutes violins guitars trumpets harmonicas").split()
CITIES = ("Lisbon Paris Berlin Madrid Rome Vienna Prague Dublin Oslo Warsaw Athens Zurich Munich Lyon Porto "
          "Seville Milan Naples Krakow Budapest Helsinki Stockholm Copenhagen Amsterdam Brussels Geneva "
          "Barcelona Valencia Hamburg Cologne Florence Venice Riga Tallinn Vilnius Sofia Bucharest Zagreb "
          "Ljubljana Bratislava Toronto Montreal Boston Chicago Denver Seattle Austin Miami Dallas Portland "
          "Lima Quito Bogota Santiago Montevideo Havana Cairo Tunis Nairobi Accra Lagos Dakar Casablanca "
          "Istanbul Ankara Tbilisi Yerevan Baku Tehran Dubai Doha Mumbai Delhi Chennai Dhaka Colombo Kathmandu "
          "Bangkok Hanoi Manila Jakarta Seoul Osaka Kyoto Taipei Perth Sydney Auckland Wellington Reykjavik "
          "Bergen Gothenburg Malmo Aarhus Antwerp Ghent Utrecht Rotterdam Bordeaux Nantes Lille Marseille "
          "Nice Turin Bologna Genoa Palermo Bilbao Malaga Granada Graz Salzburg Innsbruck Basel Bern").split()
TEMPLATES = (
    "{name} ordered {qty} {item} for delivery to {city}.",
    "Please ship {qty} {item} to {city}; the buyer is {name}.",
    "{name} from {city} wants {qty} {item}.",
    "Order note: {qty} {item}, customer {name}, deliver in {city}.",
    "Yesterday {name} bought {qty} {item} and asked us to send them to {city}.",
    "Send {city} a parcel of {qty} {item} for {name}.",
    "Customer {name} requested {qty} {item} (shipping address in {city}).",
    "{qty} {item} were ordered by {name}, who lives in {city}.",
    "New order from {city}: {name} needs {qty} {item}.",
    "Can you deliver {qty} {item} to {name} in {city}?",
)
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def _split(values: list[str], n_eval: int, rng: random.Random) -> tuple[list[str], list[str]]:
    values = values[:]
    rng.shuffle(values)
    return values[n_eval:], values[:n_eval]


def make_row(rng: random.Random, names: list[str], items: list[str], cities: list[str]) -> dict:
    name, item, city = rng.choice(names), rng.choice(items), rng.choice(cities)
    qty = rng.randint(1, 12)
    qty_text = NUMBER_WORDS[qty] if rng.random() < 0.3 else str(qty)  # "three lamps" -> 3
    sentence = rng.choice(TEMPLATES).format(name=name, item=item, city=city, qty=qty_text)
    answer = json.dumps({"name": name, "item": item, "quantity": qty, "city": city})
    return {"instruction": INSTRUCTION, "input": sentence, "output": answer}


def generate(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    names_tr, names_ev = _split(list(NAMES), 20, rng)
    items_tr, items_ev = _split(list(ITEMS), 20, rng)
    cities_tr, cities_ev = _split(list(CITIES), 20, rng)
    train = [make_row(rng, names_tr, items_tr, cities_tr) for _ in range(n_train)]
    evals = [make_row(rng, names_ev, items_ev, cities_ev) for _ in range(n_eval)]
    return train, evals


def write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def cli(description: str, generate_rows, default_out: str) -> None:
    """The generators' shared command line: --out, --train, --eval, --seed; writes train.jsonl and eval.jsonl."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--eval", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, evals = generate_rows(args.train, args.eval, args.seed)
    write(train, Path(args.out) / "train.jsonl")
    write(evals, Path(args.out) / "eval.jsonl")
    print(f"wrote {len(train)} train and {len(evals)} eval rows to {args.out}")


def main() -> None:
    cli(__doc__.splitlines()[0], generate, "examples/data/quickstart")


if __name__ == "__main__":
    main()
