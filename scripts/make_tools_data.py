"""Generate the tool-calling example deterministically: questions about weather, unit conversion and arithmetic,
answered by calling one of three tools (get_weather, convert_units, calculate).

    python scripts/make_tools_data.py [--out examples/data/tools] [--train 400 --eval 40 --seed 0]

Train rows are whole exchanges (user -> assistant tool call -> tool result -> assistant answer): the loss is on
the call and the answer, never on the tool result. Eval rows end on the assistant's call, so generating from
them measures the call alone (`tool_call_match`: same function, same parsed arguments). Eval rows use cities,
numbers and two phrasings per tool that never appear in train.
"""

from __future__ import annotations

import json
import random

from make_quickstart_data import cli

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "convert_units", "description": "Convert a quantity between units",
        "parameters": {"type": "object", "properties": {"value": {"type": "number"}, "from_unit": {"type": "string"},
                                                        "to_unit": {"type": "string"}},
                       "required": ["value", "from_unit", "to_unit"]}}},
    {"type": "function", "function": {
        "name": "calculate", "description": "Evaluate an arithmetic expression",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}},
]
CITIES = ("Lisbon Paris Berlin Madrid Rome Vienna Prague Dublin Oslo Warsaw Athens Zurich Munich Lyon Porto Seville "
          "Milan Naples Krakow Budapest Helsinki Stockholm Copenhagen Amsterdam Brussels Geneva Barcelona Hamburg "
          "Toronto Montreal Boston Chicago Denver Seattle Austin Miami Lima Quito Bogota Santiago Cairo Nairobi "
          "Istanbul Dubai Mumbai Delhi Bangkok Hanoi Manila Jakarta Seoul Osaka Kyoto Taipei Sydney Auckland").split()
UNITS = [("km", "miles", 0.621371), ("miles", "km", 1.609344), ("kg", "pounds", 2.204623), ("pounds", "kg", 0.453592),
         ("celsius", "fahrenheit", None), ("liters", "gallons", 0.264172), ("meters", "feet", 3.280840),
         ("inches", "cm", 2.54)]
WEATHER = (
    "What's the weather like in {city}?", "Is it raining in {city} right now?", "How warm is it in {city} today?",
    "Tell me the current weather in {city}.", "weather {city}", "Should I bring a coat in {city} today?",
    "How hot is it in {city}? Answer in {unit}.", "Weather for {city} in {unit}.",
    "What is the temperature in {city} in {unit}?", "Give me {city}'s weather in {unit}, please.",
)
CONVERT = (
    "Convert {value} {src} to {dst}.", "How many {dst} is {value} {src}?", "{value} {src} in {dst}?",
    "What is {value} {src} expressed in {dst}?", "I have {value} {src}; how much is that in {dst}?",
    "Please turn {value} {src} into {dst}.",
)
CALC = (
    "What is {expr}?", "Calculate {expr}.", "Compute {expr} for me.", "How much is {expr}?",
    "Can you work out {expr}?", "Quick maths: {expr}",
)
HELD_OUT = {"weather": 2, "convert": 2, "calc": 2}  # the last phrasings of each kind are eval-only
CONDITIONS = ("sunny", "cloudy", "light rain", "clear", "windy", "overcast")


def _call(name: str, arguments: dict) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": name, "arguments": arguments}}]}


def _weather(rng: random.Random, cities: list[str], phrasings: tuple[str, ...]) -> tuple[str, dict, str, str]:
    city, unit = rng.choice(cities), rng.choice(["celsius", "fahrenheit"])
    text = rng.choice(phrasings)
    args = {"city": city, "unit": unit} if "{unit}" in text else {"city": city}
    temp = rng.randint(-5, 35) if args.get("unit", "celsius") == "celsius" else rng.randint(25, 95)
    mark = "F" if args.get("unit") == "fahrenheit" else "C"
    cond = rng.choice(CONDITIONS)
    result = json.dumps({"city": city, "temperature": temp, "unit": mark, "condition": cond})
    return text.format(city=city, unit=unit), {"name": "get_weather", "arguments": args}, result, \
        f"It is {temp}°{mark} and {cond} in {city}."


def _convert(rng: random.Random, values: list[int], phrasings: tuple[str, ...]) -> tuple[str, dict, str, str]:
    src, dst, factor = rng.choice(UNITS)
    value = rng.choice(values)
    out = round(value * 9 / 5 + 32, 2) if factor is None else round(value * factor, 2)
    args = {"value": value, "from_unit": src, "to_unit": dst}
    return rng.choice(phrasings).format(value=value, src=src, dst=dst), {"name": "convert_units", "arguments": args}, \
        json.dumps({"result": out, "unit": dst}), f"{value} {src} is {out:g} {dst}."


def _calc(rng: random.Random, values: list[int], phrasings: tuple[str, ...]) -> tuple[str, dict, str, str]:
    a, b = rng.choice(values), rng.choice(values)
    op = rng.choice(["+", "-", "*", "/"])
    expr = f"{a} {op} {b}"
    value = round(eval(expr), 4) if op != "/" or b else None  # noqa: S307 - two literal ints, generated here
    return rng.choice(phrasings).format(expr=expr), {"name": "calculate", "arguments": {"expression": expr}}, \
        json.dumps({"result": value}), f"{expr} = {value:g}." if value is not None else "It is undefined."


def make_row(rng: random.Random, cities: list[str], values: list[int], split: str) -> dict:
    kind = rng.choice(["weather", "convert", "calc"])
    pool = {"weather": WEATHER, "convert": CONVERT, "calc": CALC}[kind]
    cut = len(pool) - HELD_OUT[kind]
    phrasings = pool[:cut] if split == "train" else pool[cut:]
    make = {"weather": lambda: _weather(rng, cities, phrasings), "convert": lambda: _convert(rng, values, phrasings),
            "calc": lambda: _calc(rng, values, phrasings)}[kind]
    question, call, result, answer = make()
    messages = [{"role": "user", "content": question}, _call(call["name"], call["arguments"])]
    if split == "train":
        messages += [{"role": "tool", "content": result}, {"role": "assistant", "content": answer}]
    return {"tools": TOOLS, "messages": messages}


def generate(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    cities = CITIES[:]
    rng.shuffle(cities)
    values = list(range(1, 200))
    rng.shuffle(values)
    return _unique(lambda: make_row(rng, cities[10:], values[40:], "train"), n_train), \
        _unique(lambda: make_row(rng, cities[:10], values[:40], "eval"), n_eval)


def _unique(make, n: int) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < n:
        row = make()
        key = json.dumps(row["messages"][:2])
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def main() -> None:
    cli(__doc__.splitlines()[0], generate, "examples/data/tools")


if __name__ == "__main__":
    main()
