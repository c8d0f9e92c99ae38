"""What the docs tables copied from runs share (scripts/preference_table.py, scripts/grpo_variants_table.py):
reading a run's files, formatting a figure, putting the table between a doc's markers, and the command line.

    files = read_run(Path("runs/preference/dpo"), ("metrics.json", "train_log.jsonl"), "examples/preference/...")
    main(argv, __doc__, table, root="runs/preference", choice=("--stages", [...]), markers=(BEGIN, END))
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import yaml


def read_run(run: Path, names: tuple[str, ...], example: str) -> dict[str, object]:
    """Each named file of the run, parsed by its kind (json, yaml, jsonl: a list of rows); exits naming the
    first one missing and the example to run."""
    for name in names:
        if not (run / name).is_file():
            sys.exit(f"{run / name}: missing; run the example first (tuneforge train {example})")
    files: dict[str, object] = {}
    for name in names:
        text = (run / name).read_text()
        if name.endswith(".jsonl"):
            files[name] = [json.loads(x) for x in text.splitlines() if x.strip()]
        else:
            files[name] = yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)
    return files


def cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_between(doc: Path, text: str, begin: str, end: str) -> None:
    """Replace what stands between the markers `begin` and `end` in `doc` with `text`."""
    old = doc.read_text()
    if begin not in old or end not in old:
        sys.exit(f"{doc}: has no {begin} ... {end} markers")
    start, stop = old.index(begin) + len(begin), old.index(end)
    doc.write_text(old[:start] + "\n" + text + "\n" + old[stop:])


def main(argv: list[str] | None, doc: str, table: Callable[[Path, list[str]], str], root: str,
         choice: tuple[str, list[str]], markers: tuple[str, str]) -> None:
    """`script [root] [--<choice> a b ...] [--write doc.md]`: print the table; with --write also put it between
    the markers of that file."""
    flag, default = choice
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("root", nargs="?", default=root, type=Path)
    parser.add_argument(flag, nargs="+", default=default, dest="names")
    parser.add_argument("--write", type=Path, help="a markdown file with the markers")
    args = parser.parse_args(argv)
    text = table(args.root, args.names)
    if args.write:
        write_between(args.write, text, *markers)
    print(text)
