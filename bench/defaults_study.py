"""The defaults study (issue 20): tuneforge on tasks of different kinds, over a small grid of the settings a user
does not see (schedule + warmup, max_grad_norm, LoRA dropout, weight decay, learning rate around the method's
default, epochs around the recipe's), each run through the public API (`STAGES[stage].run(cfg)`), each setting's
held-out metric per task, its rank on each task and its mean rank across tasks, written to docs/defaults.md.

    python bench/defaults_study.py --workers 2 --threads 1   # 4 tasks x 13 settings x 3 seeds (the embedded models)
    python bench/defaults_study.py --quick                   # CI subset (small data, 2 tasks x 2 settings x 1 seed)

Tasks (held-out metric): facts (pycountry's ISO 3166 table: country -> alpha-3 code, asked in another wording at
eval; exact match), quickstart (sentence -> JSON, eval names/items/cities unseen; exact match), pretrain (a domain
corpus, held-out eval loss), classify (3-way sentiment with the embedded MiniLM encoder; accuracy).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import make_pretrain_data  # noqa: E402
import make_quickstart_data  # noqa: E402
import make_sentiment_data  # noqa: E402

FACT_Q = "What is the ISO 3166 alpha-3 code of {name}?"
FACT_EVAL_Q = "Give the three-letter ISO country code for {name}."


@dataclass
class Task:
    stage: str
    kind: str  # "lm" (the causal LM) or "cls" (the encoder)
    metric: str
    higher_is_better: bool
    make: Callable[[bool, int], tuple[list[dict], list[dict]]]  # (quick, seed) -> (train rows, eval rows)
    method: str = "lora"


def _chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def make_facts(quick: bool, seed: int) -> tuple[list[dict], list[dict]]:
    import pycountry  # a public table shipped on PyPI (pip install pycountry; the `bench` extra)

    countries = sorted(pycountry.countries, key=lambda c: c.alpha_3)
    random.Random(seed).shuffle(countries)
    chosen = countries[: 16 if quick else 64]
    train = [_chat(FACT_Q.format(name=c.name), c.alpha_3) for c in chosen]
    evals = [_chat(FACT_EVAL_Q.format(name=c.name), c.alpha_3) for c in chosen]  # the facts, asked otherwise
    return train, evals


def make_quickstart(quick: bool, seed: int) -> tuple[list[dict], list[dict]]:
    return make_quickstart_data.generate(32 if quick else 128, 8 if quick else 32, seed)


def make_pretrain(quick: bool, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    docs = [{"text": make_pretrain_data.make_doc(rng)} for _ in range(48 if quick else 240)]
    return docs[: -16], docs[-16:]


def make_classify(quick: bool, seed: int) -> tuple[list[dict], list[dict]]:
    rng, s = random.Random(seed), make_sentiment_data
    n_train, n_eval = (64, 32) if quick else (400, 150)
    return ([s.review(rng, s.TRAIN_PRODUCTS) for _ in range(n_train)],
            [s.review(rng, s.EVAL_PRODUCTS) for _ in range(n_eval)])


TASKS = {
    "facts": Task("sft", "lm", "exact_match", True, make_facts),
    "quickstart": Task("sft", "lm", "exact_match", True, make_quickstart),
    "pretrain": Task("pretrain", "lm", "loss", False, make_pretrain),
    "classify": Task("classify", "cls", "accuracy", True, make_classify),
}
# One factor at a time around what ships, plus the combination. "lr xK" / "epochs xK" scale the
# method's default rate / the recipe's epochs.
CONSTANT = {"training.lr_scheduler": "constant", "training.warmup_ratio": 0.0}  # a constant rate without warmup
SETTINGS = {
    "defaults": {},
    "constant": {**CONSTANT},
    "no-clip": {"training.max_grad_norm": None},
    "dropout-0": {"method.dropout": 0.0},
    "wd-0.01": {"training.weight_decay": 0.01},
    "lr x0.5": {"lr_scale": 0.5},
    "lr x2": {"lr_scale": 2.0},
    "lr x4": {"lr_scale": 4.0},
    "epochs x1/6": {"epochs_scale": 1 / 6}, "epochs x1/3": {"epochs_scale": 1 / 3},
    "epochs x0.5": {"epochs_scale": 0.5}, "epochs x2/3": {"epochs_scale": 2 / 3},
    "epochs x2": {"epochs_scale": 2.0},
    "epochs x3": {"epochs_scale": 3.0},
    "epochs x4": {"epochs_scale": 4.0},
    "epochs x6": {"epochs_scale": 6.0},
    "lr x5": {"lr_scale": 5.0}, "lr x10": {"lr_scale": 10.0},
    "full": {"method.name": "full"},  # full fine-tuning at its own default rate (5e-5; "full+lr xK" scales it)
    "full+epochs x1/6": {"method.name": "full", "epochs_scale": 1 / 6},
    "full+constant": {"method.name": "full", **CONSTANT},
    "full+lr x3": {"method.name": "full", "lr_scale": 3.0}, "full+lr x1/3": {"method.name": "full", "lr_scale": 1 / 3},
    "constant+no-clip+dropout-0": {**CONSTANT, "training.max_grad_norm": None, "method.dropout": 0.0},
    "constant+no-clip+dropout-0+lr x4": {**CONSTANT, "training.max_grad_norm": None, "method.dropout": 0.0,
                                         "lr_scale": 4.0},
}
# The other methods at their own default rate and schedule (what ships: since session 16 a constant rate, so `<m>`
# and `<m>+constant` now train alike; the rendered pages of runs before that say cosine), at a constant rate, and at
# a constant rate three and ten times theirs (methods-study.md found most of them at the top edge of their rate grid)
for _m in ("freeze", "ia3", "adapter", "prefix", "prompt"):
    SETTINGS[_m] = {"method.name": _m}
    SETTINGS[f"{_m}+constant"] = {"method.name": _m, **CONSTANT}
    SETTINGS[f"{_m}+constant+lr x3"] = {"method.name": _m, **CONSTANT, "lr_scale": 3.0}
    SETTINGS[f"{_m}+constant+lr x10"] = {"method.name": _m, **CONSTANT, "lr_scale": 10.0}
    SETTINGS[f"{_m}+lr x1/3"] = {"method.name": _m, "lr_scale": 1 / 3}  # the shipped schedule, a third the rate
# Each method's default before session 16 changed it (docs/defaults-methods.md): its rate then, cosine after 3% warmup
BEFORE = {"freeze": 1e-4, "ia3": 3e-3, "adapter": 1e-3, "prefix": 1e-2, "prompt": 3e-2}
for _m, _lr in BEFORE.items():
    SETTINGS[f"{_m}+before"] = {"method.name": _m, "training.learning_rate": _lr, "training.lr_scheduler": "cosine",
                                "training.warmup_ratio": 0.03}
QUICK = {"tasks": ["classify", "facts"], "settings": ["defaults", "constant+no-clip+dropout-0"], "seeds": [0]}


def _write(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def build_config(task: Task, setting: dict, model: str, train: Path, evals: Path, n_eval: int, out: Path,
                 seed: int):
    """The run's Config: only model, stage, method and data given (plus what the setting changes), as a user
    who trusts the defaults would write it."""
    from tuneforge.config.schema import Config
    from tuneforge.methods import METHODS
    from tuneforge.train.recipe import choose

    raw = {"model": model, "stage": task.stage, "method": {"name": task.method},
           "data": {"train": str(train), "eval": str(evals)},
           "training": {"progress": False, "report_to": []},
           "eval": {"before": False, "generate_samples": n_eval, "max_new_tokens": 48},
           "output_dir": str(out), "seed": seed}
    for key, value in setting.items():
        if key == "lr_scale":
            raw["training"]["learning_rate"] = METHODS[setting.get("method.name", task.method)].default_lr * value
        elif key != "epochs_scale":
            block, name = key.split(".")
            raw[block][name] = value
    cfg = Config.model_validate(raw)
    if "epochs_scale" in setting:  # around what the recipe picks for this data
        n_train = sum(1 for _ in open(train, encoding="utf-8"))
        cfg.training.epochs = choose(cfg, n_train)["epochs"]["value"] * setting["epochs_scale"]
    return cfg


def run_one(task_name: str, setting_name: str, model: str, seed: int, work: str, quick: bool) -> dict:
    from tuneforge.stages import STAGES

    task, setting = TASKS[task_name], SETTINGS[setting_name]

    train_rows, eval_rows = task.make(quick, seed)
    run_dir = Path(tempfile.mkdtemp(dir=work))
    train, evals = _write(train_rows, run_dir / "train.jsonl"), _write(eval_rows, run_dir / "eval.jsonl")
    cfg = build_config(task, setting, model, train, evals, len(eval_rows), run_dir / "run", seed)
    started = time.perf_counter()
    out = STAGES[task.stage].run(cfg, lambda _msg: None)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"value": metrics["eval_after"][task.metric], "seconds": time.perf_counter() - started,
            "steps": metrics["train"]["steps"], "learning_rate": metrics["recipe"]["learning_rate"]["value"],
            "epochs": metrics["recipe"]["epochs"]["value"], "under_learned": metrics["learning"]["under_learned"],
            "diverged": metrics["learning"].get("diverged", False), "stuck": metrics["learning"].get("stuck", False),
            "precision": metrics["train"]["precision"], "cpu": _cpu_model()}


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _init_worker(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def rank(values: dict[str, float], higher_is_better: bool) -> dict[str, float]:
    """Rank 1 = best; ties share the mean of their ranks."""
    ordered = sorted(values.values(), reverse=higher_is_better)
    return {k: statistics.mean(i + 1 for i, v in enumerate(ordered) if v == values[k]) for k in values}


def table(results: dict, tasks: list[str], settings: list[str]) -> tuple[list[str], dict[str, float]]:
    """Markdown rows: each setting's mean metric per task over seeds (rank on that task), mean rank, sorted by it.
    A setting not (yet) run on a task shows "-" there and is ranked on the tasks it ran."""
    means = {t: {s: statistics.mean(r["value"] for r in results[t][s]) for s in settings if results[t].get(s)}
             for t in tasks}
    ranks = {t: rank(means[t], TASKS[t].higher_is_better) for t in tasks}
    mean_rank = {s: statistics.mean([ranks[t][s] for t in tasks if s in ranks[t]] or [float("nan")])
                 for s in settings}
    head = "| setting | " + " | ".join(f"{t} ({TASKS[t].metric}{'' if TASKS[t].higher_is_better else ', lower'})"
                                       for t in tasks) + " | mean rank |"
    lines = [head, "|---" * (len(tasks) + 2) + "|"]
    for s in sorted(settings, key=lambda k: (mean_rank[k], k)):
        cells = []
        for t in tasks:
            vals = [r["value"] for r in results[t].get(s, [])]
            if not vals:
                cells.append("-")
                continue
            spread = f" ±{statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
            cells.append(f"{means[t][s]:.3f}{spread} ({ranks[t][s]:g})")
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {mean_rank[s]:.2f} |")
    return lines, mean_rank


def render(results: dict, tasks: list[str], settings: list[str], seeds: list[int], command: str, models: dict,
           wall: float) -> str:
    lines, mean_rank = table(results, tasks, settings)
    runs = [r for t in tasks for s in settings for r in results[t].get(s, [])]
    recipe = {t: results[t][settings[0]][0] for t in tasks if results[t].get(settings[0])}
    out = ["# Defaults study", "", "Written by `bench/defaults_study.py` from its own runs; regenerate with:", "",
           "```", command, "```", "",
           f"{len(tasks)} tasks x {len(settings)} settings x {len(seeds)} seed(s) = {len(runs)} runs, "
           f"{wall / 60:.1f} min on {platform.machine()} ({os.cpu_count()} CPUs; machine load not controlled). "
           f"Models: {models['lm']} (causal LM), {models['cls']} (encoder). Each run gives only model, stage, "
           "method (LoRA unless the setting names another; its default options) and data; the setting changes what "
           "its name says. Cells: the held-out metric (mean over seeds ± stdev) and its rank on that task (1 = best); "
           "rows sorted by mean rank.", "",
           *lines, "",
           f"Recipe of `{settings[0]}` (learning rate, epochs, optimizer steps): " + "; ".join(
               f"{t}: {recipe[t]['learning_rate']:g}, {recipe[t]['epochs']:g}, {recipe[t]['steps']}" for t in recipe)
           + ".", "",
           best_line(results, tasks, mean_rank), "", *verdict_lines(results, tasks, settings)]
    return "\n".join(out)


SHORT = 0.02  # the bound: a run further than this from its task's best setting fell short of it


def verdict_lines(results: dict, tasks: list[str], settings: list[str]) -> list[str]:
    """How the run's own under-learned verdict (metrics.json `learning`, tuneforge/report/learning.py) matched
    the outcome: runs further than SHORT from the best setting's mean on their task against runs within it."""
    short, near = [0, 0], [0, 0]  # [flagged, runs]
    rose, stuck = [0, 0], [0, 0]  # the `diverged` / `stuck` verdicts (recorded since session 18): [short, near]
    for t in tasks:
        means = [statistics.mean(r["value"] for r in results[t][s]) for s in settings if results[t].get(s)]
        if not means:
            continue
        best = max(means) if TASKS[t].higher_is_better else min(means)
        for s in settings:
            for r in results[t].get(s, []):
                if "under_learned" not in r:
                    return []
                tally = short if abs(r["value"] - best) > SHORT else near
                tally[0] += bool(r["under_learned"])
                tally[1] += 1
                rose[tally is near] += bool(r.get("diverged"))
                stuck[tally is near] += bool(r.get("stuck"))
    return [f"The runs' own under-learned verdict (metrics.json `learning`) against the outcome: "
            f"{short[0]} of the {short[1]} runs further than {SHORT} from their task's best setting were flagged "
            f"under-learned; {near[0]} of the {near[1]} runs within {SHORT} of it were."
            + (f" A rising training loss (`diverged`, with a lower rate suggested) was flagged in {rose[0]} of the "
               f"short runs and {rose[1]} of the near ones; a high flat end (`stuck`) in {stuck[0]} and {stuck[1]}."
               if any("diverged" in r for t in tasks for s in settings for r in results[t].get(s, [])) else ""), ""]


def best_line(results: dict, tasks: list[str], mean_rank: dict[str, float]) -> str:
    """The best mean rank among the settings run on every task (a setting run on one task ranks only there)."""
    complete = [s for s in mean_rank if all(results[t].get(s) for t in tasks)]
    if not complete:
        return "No setting has run on every task yet."
    best = min(complete, key=lambda k: (mean_rank[k], k))
    partial = len(mean_rank) - len(complete)
    return (f"Best by mean rank among the {len(complete)} setting(s) run on every task: **{best}**"
            + (f" ({partial} other(s) ran on only some tasks and rank only there)." if partial else "."))


NOTES = "<!-- notes: kept when the table is regenerated -->"


def write_doc(out: Path, text: str) -> None:
    """Write the generated part; a hand-written part after the NOTES marker in an existing file is kept."""
    old = out.read_text() if out.is_file() else ""
    kept = old[old.index(NOTES):] if NOTES in old else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + ("\n" + kept if kept else ""))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, 2 tasks x 2 settings x 1 seed")
    parser.add_argument("--tasks", help=f"comma list of {', '.join(TASKS)}")
    parser.add_argument("--settings", help="comma list of setting names (default: all)")
    parser.add_argument("--seeds", help="comma list of seeds (default 0,1,2; --quick: 0)")
    parser.add_argument("--lm-model", default="smollm2-135m-instruct")
    parser.add_argument("--cls-model", default="minilm-l6")
    parser.add_argument("--out", default=str(ROOT / "docs" / "defaults.md"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "defaults_study.json"), help="runs' figures")
    parser.add_argument("--threads", type=int, help="torch threads per run (1 on a shared or 2-core machine)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs in --json and run the rest")
    parser.add_argument("--render", action="store_true", help="only write the table from --json (a partial study too)")
    args = parser.parse_args(argv)
    if args.render:
        return render_saved(Path(args.json), Path(args.out))
    tasks = args.tasks.split(",") if args.tasks else (QUICK["tasks"] if args.quick else list(TASKS))
    settings = args.settings.split(",") if args.settings else (QUICK["settings"] if args.quick else list(SETTINGS))
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else (QUICK["seeds"] if args.quick else [0, 1, 2])
    models = {"lm": args.lm_model, "cls": args.cls_model}
    _init_worker(args.threads)
    started = time.perf_counter()
    command = ("python bench/defaults_study.py " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    results: dict = {t: {s: [] for s in settings} for t in tasks}
    done_before, commands = 0.0, [command]
    if args.resume and Path(args.json).is_file():  # go on with (or add to) a study: every finished run is kept,
        saved = json.loads(Path(args.json).read_text())  # other tasks' and settings' too, and every command
        results = saved["results"]
        for t in tasks:
            for s in settings:
                results.setdefault(t, {}).setdefault(s, [])
        done_before = saved.get("wall_seconds", 0.0)
        commands = [c for c in saved["command"].splitlines() if c != command] + [command]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    # seed outermost: a study stopped early has every task x setting at the first seeds, not some settings only
    todo = [(seed, t, s) for seed in seeds for t in tasks for s in settings
            if not any(r["seed"] == seed for r in results[t][s])]

    def record(seed: int, t: str, s: str, r: dict) -> None:
        results[t][s].append({"seed": seed, **r})
        print(f"{t:10s} {s:34s} seed {seed}: {TASKS[t].metric} {r['value']:.4f} "
              f"({r['steps']} steps, {r['seconds']:.0f}s)", flush=True)
        Path(args.json).write_text(json.dumps({  # after every run: a stopped study keeps what it ran
            "command": "\n".join(commands), "models": models, "results": results, "workers": args.workers,
            "wall_seconds": done_before + time.perf_counter() - started}, indent=1))

    with tempfile.TemporaryDirectory(prefix="defaults-study-") as work:
        if args.workers > 1:  # independent runs in separate processes (each with --threads torch threads)
            with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker, initargs=(args.threads,)) as pool:
                futures = {pool.submit(run_one, t, s, models[TASKS[t].kind], seed, work, args.quick): (seed, t, s)
                           for seed, t, s in todo}
                for future in as_completed(futures):
                    record(*futures[future], future.result())
        else:
            for seed, t, s in todo:
                record(seed, t, s, run_one(t, s, models[TASKS[t].kind], seed, work, args.quick))
    out = render_saved(Path(args.json), Path(args.out))  # the whole study in the file, not only this grid
    print(f"wrote {out} and {args.json}")
    return out


def render_saved(path: Path, out: Path) -> Path:
    """The table of every finished run in the study's JSON (a partial or merged study too) into `out`."""
    saved = json.loads(path.read_text())
    tasks = [t for t in saved["results"] if any(saved["results"][t].values())]  # tasks with a finished run
    settings = list(dict.fromkeys(s for t in tasks for s in saved["results"][t] if saved["results"][t][s]))
    seeds = sorted({r["seed"] for t in tasks for s in settings for r in saved["results"][t].get(s, [])})
    write_doc(out, render(saved["results"], tasks, settings, seeds, saved["command"], saved["models"],
                          saved.get("wall_seconds", 0.0)))
    return out


if __name__ == "__main__":
    main()
