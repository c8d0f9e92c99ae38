"""Data at scale (issue 17): continued pre-training on generated corpora of growing size, each run a fresh
`stage: pretrain` process (the embedded SmolLM2-135M, LoRA, a few steps): time to the first training step,
tokenization rate, peak RSS of the whole process tree while the data is made ready (building or opening the
token cache) and while training, and the same on a second run that reuses the cache. With --compare-memory,
the smallest corpus also runs through the old in-memory path (records and token ids in Python lists) side by
side, and the ratios are printed.

    python scripts/make_pretrain_corpus.py --size-mb 100 --out /tmp/c100.jsonl
    nice python bench/bench_data_scale.py /tmp/c100.jsonl --compare-memory --json bench/results/data_scale.json
    nice python bench/bench_data_scale.py /tmp/c4096.jsonl --steps 3 --json bench/results/data_scale.json
    python bench/bench_data_scale.py --render bench/results/data_scale.json --write docs/benchmarks.md docs/data.md

Each run gets its own TUNEFORGE_HOME (the models directory linked from the usual one), so the first run of a
corpus always builds its cache. RSS is sampled every 0.2 s over the child and all its descendants (psutil);
the child marks when its data is ready, which splits the samples into the two phases. --json merges the
runs into the file (one entry per corpus and run, each with the machine's load and the environment: CPU,
flags, versions, commit; bench/env_record.py); --render prints the table from that file and --write replaces
the text between `<!-- bench_data_scale:begin -->` and `<!-- bench_data_scale:end -->` in the named files.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BEGIN, END = "<!-- bench_data_scale:begin -->", "<!-- bench_data_scale:end -->"
RUNS = ("first (builds cache)", "second (reuses)", "in-memory (old path)")


def child(mode: str, corpus: str, out: str, steps: int, t0: float, phase_file: str) -> dict:
    """One run in this process; timestamps are seconds since the parent started it (`t0`, wall clock)."""
    import tuneforge.stages.skeleton as skeleton
    import tuneforge.train.loop as loop
    from tuneforge.config.schema import Config
    from tuneforge.data import stage_data
    from tuneforge.stages import STAGES

    marks: dict = {"imported_s": time.time() - t0, "cpu_imported_s": time.process_time()}
    load_data, forward_backward = skeleton.load_data, loop.forward_backward

    def timed_load_data(run):
        marks["data_start_s"], marks["cpu_data_start_s"] = time.time() - t0, time.process_time()
        data = load_data(run)
        marks["data_ready_s"], marks["cpu_data_ready_s"] = time.time() - t0, time.process_time()
        Path(phase_file).write_text("train")
        marks["train_sequences"] = len(data.train)
        return data

    def timed_forward_backward(*args, **kwargs):
        marks.setdefault("step_begin_s", time.time() - t0)  # start-up over: imports, model, data, method
        marks.setdefault("cpu_step_begin_s", time.process_time())
        result = forward_backward(*args, **kwargs)
        marks.setdefault("first_step_s", time.time() - t0)
        marks.setdefault("cpu_first_step_s", time.process_time())
        return result

    skeleton.load_data, loop.forward_backward = timed_load_data, timed_forward_backward
    if mode == "memory":  # today's path before the cache: every record and token id in Python lists
        from tuneforge.data.dataset import load_train_eval_records

        def in_memory(cfg, tokenizer, log):
            train_records, _ = load_train_eval_records(cfg, log)  # no eval set in this bench
            train, stats = stage_data.load_stage_examples(cfg, tokenizer, train_records)
            return stage_data.CachedSplit(train, stats)

        stage_data.load_cached_split = in_memory
    cfg = Config.model_validate({
        "model": "smollm2-135m-instruct", "stage": "pretrain", "method": {"name": "lora", "r": 8},
        "data": {"train": corpus}, "output_dir": out, "seed": 0,
        "training": {"max_steps": steps, "batch_size": 4, "max_length": 256, "learning_rate": 1e-4,
                     "progress": False, "report_to": [], "warmup_steps": 0},
        "eval": {"before": False, "generate_samples": 0}})
    logs: list[str] = []
    STAGES["pretrain"](cfg, log=logs.append)
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    built = next((line for line in logs if line.startswith("data cache: built")), "")
    return {**marks, "wall_s": time.time() - t0, "train_tokens_per_s": metrics["train"]["tokens_per_second"],
            "corpus_tokens": metrics["data"]["train"]["corpus_tokens"], "tokens": metrics["data"]["train"]["tokens"],
            "reused": any(line.startswith("data cache: reused") for line in logs),
            "cache_tok_per_s": int(built.rsplit("(", 1)[-1].split(" ")[0].replace(",", "")) if built else None}


def sample_tree(pid: int, phase_file: Path, peaks: dict, stop: threading.Event, every: float = 0.2) -> None:
    """Peak summed RSS (MB) of `pid` and its descendants, split at the moment `phase_file` appears."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        phase = "train" if phase_file.exists() else "data"
        peaks[phase] = max(peaks.get(phase, 0.0), total / 2**20)
        stop.wait(every)


def run_child(mode: str, corpus: Path, home: Path, steps: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-run-"))
    env = {**os.environ, "TUNEFORGE_HOME": str(home)}
    env.pop("TUNEFORGE_DATA_CACHE", None)  # the cache goes under this run's home
    phase_file = out / "phase"
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.time()
    cmd = [sys.executable, __file__, "--child", mode, "--out", str(out / "run"), "--steps", str(steps),
           "--t0", repr(t0), "--phase-file", str(phase_file), str(corpus)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_tree, args=(proc.pid, phase_file, peaks, stop), daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    stop.set()
    sampler.join()
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode:
        raise SystemExit(f"{mode} run on {corpus} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "rss_data_mb": round(peaks.get("data", 0.0)), "rss_train_mb": round(peaks.get("train", 0.0)),
            "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()]}


def fmt_row(e: dict) -> str:
    r = e["result"]
    cells = (e["corpus"], f"{e['mb']:.0f}", e["run"], f"{r['corpus_tokens']:,}",
             f"{r['cache_tok_per_s']:,}" if r["cache_tok_per_s"] else ("reused" if r["reused"] else "-"),
             f"{r['data_ready_s'] - r['data_start_s']:.1f}", f"{r['data_ready_s']:.1f}", f"{r['first_step_s']:.1f}",
             f"{r['cpu_data_ready_s'] - r['cpu_data_start_s']:.1f}", f"{r['cpu_first_step_s']:.1f}",
             f"{r['rss_data_mb']:,}", f"{r['rss_train_mb']:,}", f"{r['train_tokens_per_s']:.0f}",
             " / ".join(f"{x:.1f}" for x in (r["load_before"][0], r["load_after"][0])))
    return "| " + " | ".join(cells) + " |"


COLUMNS = ("corpus", "MB", "run", "corpus tokens", "cache build tok/s", "data s", "data ready s", "first step s",
           "data CPU s", "first step CPU s", "RSS data MB", "RSS train MB", "train tok/s", "load 1-min (start / end)")


def cpu_rate(r: dict) -> float:
    """Corpus tokens per CPU second of the data step (hash, check, tokenize, write: the build on a first run)."""
    return r["corpus_tokens"] / max(r["cpu_data_ready_s"] - r["cpu_data_start_s"], 1e-9)


def _begun(r: dict) -> str:
    """Process start to the first step's start (runs recorded before this mark have only its end)."""
    if "step_begin_s" not in r:
        return ""
    return f"{r['step_begin_s']:.1f} s, {r['cpu_step_begin_s']:.1f} CPU s to its start, "


def ratios(entries: list[dict]) -> list[str]:
    """The goals' figures, computed from whatever runs the file holds."""
    by = {(e["corpus"], e["run"]): e for e in entries}
    firsts = sorted((e for e in entries if e["run"] == RUNS[0]), key=lambda e: e["mb"])
    lines = []
    if len(firsts) >= 2 and firsts[-1]["mb"] > 1.5 * firsts[0]["mb"]:  # sizes to compare
        small, big = firsts[0], firsts[-1]
        peak = max(big["result"]["rss_data_mb"], big["result"]["rss_train_mb"])
        small_peak = max(small["result"]["rss_data_mb"], small["result"]["rss_train_mb"])
        lines.append(f"- Peak RSS (process tree, build or training), {big['corpus']} / {small['corpus']}: "
                     f"{peak:,} / {small_peak:,} MB = {peak / small_peak:.2f}x (goal: within 1.5x, under 3,072 MB); "
                     f"while building: {big['result']['rss_data_mb'] / small['result']['rss_data_mb']:.2f}x.")
    if firsts:
        rates = ", ".join(f"{e['corpus']} {e['result']['cache_tok_per_s']:,} ({cpu_rate(e['result']):,.0f} per CPU "
                          "second)" for e in firsts)
        lines.append(f"- Cache build tok/s by size (linear cost = equal rates; per CPU second: the process's user+sys "
                     f"time, which the machine's load does not inflate): {rates}.")
    seconds = [by[(e["corpus"], RUNS[1])] for e in firsts if (e["corpus"], RUNS[1]) in by]
    if seconds:
        starts = ", ".join(f"{e['corpus']} {_begun(r)}{r['first_step_s']:.1f} s, {r['cpu_first_step_s']:.1f} CPU s "
                           f"to its end (data ready {r['data_ready_s']:.1f} s, of it the data "
                           f"{r['data_ready_s'] - r['data_start_s']:.1f} s)" for e in seconds for r in [e["result"]])
        lines.append(f"- Second run, process start to the first step (goal: under 10 s): {starts}.")
    for e in entries:
        if e["run"] == RUNS[2] and (e["corpus"], RUNS[0]) in by:
            mem, first = e["result"], by[(e["corpus"], RUNS[0])]["result"]
            second = by.get((e["corpus"], RUNS[1]), {}).get("result")
            tps = mem["train_tokens_per_s"]
            also = f", {second['train_tokens_per_s'] / tps:.2f}x (second)" if second else ""
            lines.append(f"- {e['corpus']}, cache / in-memory: training tok/s {first['train_tokens_per_s'] / tps:.2f}x "
                         f"(first run){also}; "
                         f"RSS when the data is ready {first['rss_data_mb'] / mem['rss_data_mb']:.2f}x; RSS while "
                         f"training {first['rss_train_mb'] / mem['rss_train_mb']:.2f}x.")
    return lines


def render(data: dict) -> str:
    entries = sorted(data["entries"], key=lambda e: (e["mb"], RUNS.index(e["run"])))
    envs = {e["invocation"]: data["invocations"][e["invocation"]] for e in entries}  # in order, each once
    lines = ["Written by `python bench/bench_data_scale.py --render bench/results/data_scale.json` from runs of:", ""]
    for inv in envs.values():
        cpu, env = inv["env"]["cpu"], inv["env"]
        flags = " ".join(f for f, on in (cpu.get("flags_of_interest") or {}).items() if on)
        lines.append(f"- `{inv['command']}` at {env['time_utc']}, commit {(env['git']['commit'] or '?')[:9]}"
                     f"{' (dirty)' if env['git']['dirty'] else ''}; {cpu['model']}, {cpu['logical_cpus']} CPUs "
                     f"({flags}), {env['memory_gib']} GiB; torch {env['versions']['torch']}, transformers "
                     f"{env['versions']['transformers']}, tokenizers {env['versions']['tokenizers']}, python "
                     f"{env['versions']['python']}.")
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [fmt_row(e) for e in entries]
    return "\n".join(lines + [""] + ratios(entries)) + "\n"


def merge_json(path: Path, new: list[dict], invocation: dict) -> None:
    data = json.loads(path.read_text()) if path.exists() else {"invocations": {}, "entries": []}
    key = invocation["env"]["time_utc"]
    data["invocations"][key] = invocation
    done = {(e["corpus"], e["run"]) for e in new}
    data["entries"] = [e for e in data["entries"] if (e["corpus"], e["run"]) not in done]
    data["entries"] += [{**e, "invocation": key} for e in new]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def measure(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from env_record import environment

    invocation = {"command": shlex.join(["python", "bench/bench_data_scale.py", *sys.argv[1:]]),
                  "env": environment()}
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    models = Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".cache" / "tuneforge") / "models"
    entries = []
    for i, corpus in enumerate(map(Path, a.corpora)):
        home = Path(tempfile.mkdtemp(prefix="bench-home-", dir=a.tmp))
        (home / "models").symlink_to(models)
        try:
            runs = [(RUNS[0], "cache"), (RUNS[1], "cache")] + ([(RUNS[2], "memory")] if a.compare_memory and i == 0
                                                               else [])
            for label, mode in runs:
                result = run_child(mode, corpus, home, a.steps)
                entries.append({"corpus": corpus.stem, "mb": corpus.stat().st_size / 2**20, "run": label,
                                "steps": a.steps, "result": result})
                print(fmt_row(entries[-1]), flush=True)
                if a.json:
                    merge_json(Path(a.json), entries, invocation)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    print("\n" + "\n".join(ratios(entries)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpora", nargs="*")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--compare-memory", action="store_true", help="also run the first corpus in memory")
    p.add_argument("--json", default=None, help="merge the runs into this JSON file")
    p.add_argument("--tmp", default=None, help="where the runs' homes (and caches) go (default: the temp dir)")
    p.add_argument("--render", default=None, help="print the table from this JSON file")
    p.add_argument("--write", nargs="*", default=[], help="with --render: replace the marked block in these files")
    p.add_argument("--child", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--phase-file", default=None)
    p.add_argument("--t0", type=float, default=0.0)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.corpora[0], a.out, a.steps, a.t0, a.phase_file)))
    elif a.render:
        text = render(json.loads(Path(a.render).read_text()))
        print(text)
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
        from _tables import write_between

        for doc in a.write:
            write_between(Path(doc), text, BEGIN, END)
    elif a.corpora:
        measure(a)
    else:
        p.error("give corpora to measure, or --render JSON")


if __name__ == "__main__":
    main()
