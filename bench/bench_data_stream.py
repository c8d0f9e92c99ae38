"""Streaming benchmark for `tuneforge data check` and `data prepare`: memory stays bounded as files grow.

Generates an sft JSONL of SIZE MB (alpaca rows of ~1 KB with 1% exact duplicates, 1% near-duplicates,
some PII and some broken lines) and one RATIO times smaller, runs `data check` and `data prepare` on
each in a fresh process, and prints records/s, peak RSS and the RSS ratio big / small (bounded
memory = a ratio near 1). As a baseline, the small file is also read whole with
a list, as tuneforge.data.load.load_records does, which is what a list-based reader costs.

    python bench/bench_data_stream.py                  # 1024 MB vs 102 MB (~25 min on 2 cores)
    python bench/bench_data_stream.py --size-mb 20     # quick look
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do their "
         "time if will way about many then them write would like so these her long make thing see him two has look "
         "more day could go come did number sound no most people my over know water than call first who may down "
         "side been now find any new work part take get place made live where after back little only round man year "
         "came show every good me give our under name very through just form sentence great think say help low line "
         "differ turn cause much mean before move right boy old too same tell does set three want air well also play "
         "small end put home read hand port large spell add even land here must big high such follow act why ask men "
         "change went light kind off need house picture try us again animal point mother world near build self "
         "earth").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def generate(path: Path, size_mb: float, seed: int = 0) -> int:
    """Write ~size_mb of alpaca JSONL; returns the number of lines."""
    rng = random.Random(seed)
    target, written, lines = size_mb * 2**20, 0, 0
    recent: list[str] = []
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            roll = rng.random()
            if roll < 0.01 and recent:
                line = rng.choice(recent)  # exact duplicate
            elif roll < 0.02 and recent:
                row = json.loads(rng.choice(recent))
                row["output"] = row["output"].upper() + "!"  # near-duplicate: case and punctuation differ
                line = json.dumps(row)
            elif roll < 0.021:
                line = '{"instruction": "broken'
            else:
                pii = f" mail {rng.randrange(10**6)}@example.com" if roll < 0.05 else ""
                row = {"instruction": _text(rng, rng.randint(8, 40)) + pii, "input": _text(rng, rng.randint(0, 30)),
                       "output": _text(rng, rng.randint(60, 220))}
                line = json.dumps(row)
                if len(recent) < 1000:
                    recent.append(line)
                else:
                    recent[rng.randrange(1000)] = line
            f.write(line + "\n")
            written += len(line) + 1
            lines += 1
    return lines


def _child(command: str, path: str, out: str) -> None:
    """Run one command in this process and print its wall time (imports excluded) and peak RSS as JSON."""
    if command != "baseline":
        import transformers  # noqa: F401  (the CLI imports it to quiet its logging; not part of the work)

        import tuneforge.datatools.check  # noqa: F401
        import tuneforge.datatools.prepare  # noqa: F401
    start = time.perf_counter()
    if command == "baseline":  # what load_records does (every record in a list), minus its stop at a bad line
        records = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        n, rc = len(records), 0
    else:
        from tuneforge.cli import main

        args = ["data", command, path, "--no-progress"] + (["--output", out] if command == "prepare" else [])
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(args)
        n = None
    print(json.dumps({"seconds": time.perf_counter() - start, "rc": rc, "records": n,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(command: str, path: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", command, str(path), str(out)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{command} {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1024)
    parser.add_argument("--ratio", type=float, default=10)
    parser.add_argument("--workdir", help="default: a temporary directory, removed afterwards")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        rows = []
        for label, size in (("small", args.size_mb / args.ratio), ("big", args.size_mb)):
            path = work / f"{label}.jsonl"
            t = time.perf_counter()
            lines = generate(path, size)
            print(f"generated {path.name}: {path.stat().st_size / 2**20:.0f} MB, {lines:,} lines "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
            for command in ("check", "prepare"):
                r = measure(command, path, work / f"{label}-prepared")
                rows.append({"file": label, "mb": path.stat().st_size / 2**20, "lines": lines, "command": command, **r})
                print(f"  {command:8s} rc {r['rc']}  {lines / r['seconds']:8,.0f} records/s  {r['seconds']:7.1f} s  "
                      f"peak RSS {r['peak_rss_mb']:7.1f} MB", flush=True)
            if label == "small" and not args.skip_baseline:
                r = measure("baseline", path, work / "unused")
                rows.append({"file": label, "mb": path.stat().st_size / 2**20, "lines": lines, "command": "baseline",
                             **r})
                print(f"  baseline (every record in a list, as load_records): peak RSS {r['peak_rss_mb']:7.1f} MB",
                      flush=True)
            if label == "big":
                path.unlink()
    by = {(r["file"], r["command"]): r for r in rows}
    print(f"\n{'command':10s} {'small RSS':>10s} {'big RSS':>10s} {'ratio':>6s}   (files {args.ratio:g}x apart)")
    for command in ("check", "prepare"):
        small, big = by[("small", command)], by[("big", command)]
        print(f"{command:10s} {small['peak_rss_mb']:9.1f}M {big['peak_rss_mb']:9.1f}M "
              f"{big['peak_rss_mb'] / small['peak_rss_mb']:6.2f}")
    if ("small", "baseline") in by:
        base = by[("small", "baseline")]["peak_rss_mb"]
        print(f"baseline (list of records) on the small file: {base:.1f} MB "
              f"({base / by[('small', 'check')]['peak_rss_mb']:.2f}x the streaming check on the same file)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
