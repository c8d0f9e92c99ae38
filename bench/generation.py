"""What evaluation's generation costs before and after issue 19's change to it: the quickstart's 40 eval prompts
(examples/quickstart.yaml: its chat template, max_new_tokens 40) greedy-decoded by the embedded default with the
quickstart's LoRA attached (freshly initialised: the base's answers, which run to the token limit, the slow case),
as `tuneforge train` generates before and after training.

  before: batches of 8 prompts in file order, frozen weights re-cast by autocast at every step (session 18)
  now:    tuneforge.evaluation.generate as shipped (length-sorted batches sized by memory; bf16 weights held)

Each (setting, precision) runs in its own process, repetitions interleaved; a child reports its wall seconds and
how far generation raised the process's peak RSS above what loading and a warm-up left. At fp32 both settings
must give the same texts (checked); at bf16 a different batch composition rounds differently (counted).

    python bench/generation.py --reps 3 --out bench/results/generation.json
    python bench/generation.py --model <dir> --reps 1 --rows 6 --new-tokens 4     # quick (the test's)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = ("before", "now")
PRECISIONS = ("fp32", "bf16")


def _before(gen) -> None:
    """Session 18's generation: consecutive batches of 8, no held weights."""
    gen.bf16_weights = lambda model, precision: contextlib.nullcontext(0)
    gen._groups = lambda model, tok, prompts, batch_size, new=0: [
        list(range(i, min(i + 8, len(prompts)))) for i in range(0, len(prompts), 8)]


def child(model: str, setting: str, precision: str, rows: int, new_tokens: int) -> dict:
    import tuneforge.evaluation.generate as gen
    import tuneforge.stages.skeleton as skeleton
    from tuneforge.config.load import load_config
    from tuneforge.evaluation.items import generation_items

    if setting == "before":
        _before(gen)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "examples/quickstart.yaml", [f"model={model}", f"output_dir={tmp}/run",
                                                                f"training.precision={precision}"])
        run = skeleton.begin(cfg, lambda _m: None)
        data = skeleton.load_data(run)
        items = generation_items(cfg, run.tokenizer, data.eval_records)[:rows]
        skeleton.open_output(run)
        net, _ = skeleton.apply_method(run, skeleton.load_base(run))
        prompts = [i.prompt_ids for i in items]
        gen.generate(net, run.tokenizer, prompts[:1], 2, run.precision)  # kernels warmed
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        texts = gen.generate(net, run.tokenizer, prompts, new_tokens, run.precision)
        seconds = time.perf_counter() - started
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    return {"seconds": seconds, "texts": texts, "precision": run.precision, "rss_growth_mb": grown / 1024,
            "prompt_tokens": [len(p) for p in prompts]}


def run_child(model: str, setting: str, precision: str, rows: int, new_tokens: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", setting, "--precision", precision, "--model", model,
                          "--rows", str(rows), "--new-tokens", str(new_tokens)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--child", choices=SETTINGS)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model, args.child, args.precision, args.rows, args.new_tokens)))
        return {}
    runs: dict[str, list[dict]] = {f"{s}/{p}": [] for p in PRECISIONS for s in SETTINGS}
    for rep in range(args.reps):
        for key in runs:
            setting, precision = key.split("/")
            r = run_child(args.model, setting, precision, args.rows, args.new_tokens)
            runs[key].append(r)
            print(f"rep {rep + 1}: {key:12s} {r['seconds']:6.2f} s, peak RSS +{r['rss_growth_mb']:.0f} MB",
                  flush=True)
    cases = {}
    for key, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        cases[key] = {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs), "reps": secs,
                      "rss_growth_mb": statistics.median(r["rss_growth_mb"] for r in rs),
                      "precision": rs[0]["precision"]}
    texts = {k: rs[0]["texts"] for k, rs in runs.items()}
    same = {p: sum(a == b for a, b in zip(texts[f"before/{p}"], texts[f"now/{p}"], strict=True)) for p in PRECISIONS}
    if same["fp32"] != args.rows:
        raise SystemExit(f"fp32 generations differ between the settings ({same['fp32']} of {args.rows} the same)")
    report = {"command": "python bench/generation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": args.rows, "new_tokens": args.new_tokens, "prompt_tokens": runs["now/fp32"][0]["prompt_tokens"],
              "cases": cases, "same_texts": same,
              "speedup": {p: cases[f"before/{p}"]["median_s"] / cases[f"now/{p}"]["median_s"] for p in PRECISIONS}}
    for key, c in cases.items():
        print(f"{key:12s} median {c['median_s']:6.2f} s ({c['min_s']:.2f}-{c['max_s']:.2f}), "
              f"peak RSS +{c['rss_growth_mb']:.0f} MB")
    for p in PRECISIONS:
        print(f"{p}: now {report['speedup'][p]:.2f}x faster than before; {same[p]} of {args.rows} texts the same")
    from bench.env_record import with_environment

    return with_environment(report, args.out or None)


if __name__ == "__main__":
    main()
