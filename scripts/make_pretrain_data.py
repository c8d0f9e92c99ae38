"""Generate a small domain corpus deterministically for continued pre-training (domain adaptation):
maintenance notes for a fictional line of "Veltro" heat pumps, with their own part names and codes.

    python scripts/make_pretrain_data.py [--out examples/data/pretrain] [--train 300 --eval 30 --seed 0]

The base model has never seen this vocabulary; after `tuneforge train examples/pretrain.yaml` its
perplexity on held-out notes drops.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

MODELS = ["Veltro HX-20", "Veltro HX-35", "Veltro Aria 9", "Veltro Aria 12", "Veltro Nordline K4"]
PARTS = ["the brine manifold", "the Quillon valve", "the scroll compressor", "the Deltamesh filter",
         "the defrost relay", "the Ostrander coil", "the condensate trap", "the VX control board"]
CODES = {"E17": "low brine pressure", "E22": "Quillon valve stuck closed", "E31": "defrost relay timeout",
         "E40": "Ostrander coil overheating", "E08": "Deltamesh filter clogged", "E53": "VX board checksum fault"}
ACTIONS = ["flush {part} with glycol mix G-40", "reseat {part} and torque the clamps to 12 Nm",
           "replace {part} with kit VK-{kit}", "recalibrate {part} from the service menu (menu 7.{menu})",
           "inspect {part} for scale and clean it with descaler D-9"]
OPENINGS = ["Service note for the {model}.", "Field report, {model}.", "Maintenance bulletin: {model}.",
            "Technician log ({model})."]


def make_doc(rng: random.Random) -> str:
    model = rng.choice(MODELS)
    code, meaning = rng.choice(sorted(CODES.items()))
    part = rng.choice(PARTS)
    action = rng.choice(ACTIONS).format(part=part, kit=rng.randint(100, 999), menu=rng.randint(1, 9))
    lines = [
        rng.choice(OPENINGS).format(model=model),
        f"Fault code {code} means {meaning}.",
        f"When {code} appears, first {action}.",
        f"If {code} returns within {rng.randint(2, 14)} days, check {rng.choice(PARTS)} as well.",
        f"Log the brine temperature ({rng.randint(-5, 12)} C) and the flow rate ({rng.randint(8, 30)} l/min) "
        "before closing the ticket.",
    ]
    rng.shuffle(lines[2:4])
    return " ".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/data/pretrain")
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--eval", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", args.train), ("eval", args.eval)):
        rows = [{"text": make_doc(rng)} for _ in range(n)]
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {args.train} train and {args.eval} eval documents to {out}")


if __name__ == "__main__":
    main()
