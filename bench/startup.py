"""Where the seconds of `tuneforge train` go before the first step and after the last one (issue 19 item 3):
import, config, checks + tokenizer, data, model load, eval before, method, first step; then the last step to
the exit split into train-loop end (final checkpoint), eval loss, generation, save, report + plots and the
interpreter's exit. Each repetition is a fresh process that runs the real stage (tuneforge.stages.lm.run_lm)
with timers around the skeleton's functions, so nothing in tuneforge changes for the measurement. Wall and
CPU seconds (user + sys of the process) are both kept: on a shared machine the CPU seconds move less.

    python bench/startup.py examples/quickstart.yaml training.max_steps=2 eval.before=false --repeat 3
    python bench/startup.py CONFIG [key=value ...] [--repeat N] [--json OUT.json]

Prints the phase table (median and min-max of each phase over the repetitions) with the CPU model and the
load average before and after; warm the caches first (the first repetition of a cold cache is not a start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START = ("import", "config", "begin", "data", "open_output", "model_load", "eval_before", "method", "first_step")
END = ("loop_end", "eval_loss", "generation", "save", "report", "plots", "finish_rest", "exit")


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


class Clock:
    """Stamps (name, wall since launch, cpu) in order; a phase is the span from the previous stamp."""

    def __init__(self, launched: float) -> None:
        self.launched, self.stamps = launched, []

    def stamp(self, name: str) -> None:
        self.stamps.append((name, time.time() - self.launched, _cpu()))


def _timed(clock: Clock, owner, attr: str, name: str, before: str | None = None) -> None:
    """Wrap owner.attr: stamp `before` (the phase ending at the call) and `name` (the call itself)."""
    inner = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        if before:
            clock.stamp(before)
        out = inner(*args, **kwargs)
        clock.stamp(name() if callable(name) else name)
        return out

    setattr(owner, attr, wrapper)


def child(config: str, overrides: list[str], launched: float, out_json: Path) -> None:
    clock = Clock(launched)
    clock.stamp("interpreter")
    import tuneforge.report.write as report_write
    import tuneforge.stages.lm as lm
    import tuneforge.stages.sft  # noqa: F401  (STAGES imports it at the first run)
    import tuneforge.train.metric_log as metric_log
    from tuneforge import cli  # what `tuneforge train` imports before it runs the stage
    from tuneforge.config.load import load_config
    from tuneforge.stages import STAGES  # noqa: F401  (cmd_train imports it)

    cli._quiet_libraries()
    clock.stamp("import")
    load_config(config, overrides)  # the config phase (cmd_train loads it again: ~0.01 s, in "begin")
    clock.stamp("config")
    sk = lm.skeleton
    state = {"trained": False, "steps": 0}
    for attr, name in (("begin", "begin"), ("load_data", "data"), ("open_output", "open_output"),
                       ("load_base", "model_load"), ("eval_before", "eval_before"), ("apply_method", "method")):
        _timed(clock, sk, attr, name)
    _timed(clock, sk, "save_model", "save", before="finish_rest")
    _timed(clock, sk, "write_report", "report", before="finish_rest")
    _timed(clock, report_write, "plot_loss", "plots", before="report")

    def after_train(name: str):
        return lambda: name if state["trained"] else f"before:{name}"

    _timed(clock, lm, "evaluate_lm_loss", after_train("eval_loss"), before=None)
    _timed(clock, lm, "generate", after_train("generation"), before=None)
    add_step = metric_log.MetricLog.add_step

    def on_step(self, history, **entry):
        add_step(self, history, **entry)
        state["steps"] += 1
        if state["steps"] == 1:
            clock.stamp("first_step")
        clock.stamp("step")

    metric_log.MetricLog.add_step = on_step
    train = lm.train

    def timed_train(*args, **kwargs):
        result = train(*args, **kwargs)
        clock.stamp("loop_end")
        state["trained"] = True
        return result

    lm.train = timed_train
    sys.argv = ["tuneforge", "train", config, *overrides]
    code = cli.main()  # as the console script runs it (argv from sys.argv)
    clock.stamp("finish_rest")
    assert code == 0, code
    out_json.write_text(json.dumps({"stamps": clock.stamps, "steps": state["steps"]}), encoding="utf-8")


HEAVY = ("peft", "bitsandbytes", "trl", "mlflow", "datasets", "pandas", "fastapi", "sklearn", "matplotlib",
         "tensorboard", "accelerate", "transformers", "torch")


def import_only(launched: float) -> None:
    """`--imports`: only the modules a train run imports before it runs the stage, and which heavy ones."""
    import tuneforge.stages.sft  # noqa: F401
    from tuneforge import cli  # noqa: F401
    from tuneforge.stages import STAGES  # noqa: F401

    print(json.dumps({"wall": time.time() - launched, "cpu": _cpu(),
                      "heavy": [m for m in HEAVY if m in sys.modules]}))


def phases(stamps: list, exited: float, total_cpu: float) -> dict[str, dict[str, float]]:
    """Sum the spans between stamps into the table's phases; the steps after the first are the run itself."""
    spans: dict[str, dict[str, float]] = {}
    prev_wall, prev_cpu = 0.0, 0.0
    for name, wall, cpu in stamps:
        key = "steps" if name == "step" else {"interpreter": "import", "before:eval_loss": "eval_before",
                                              "before:generation": "eval_before"}.get(name, name)
        span = spans.setdefault(key, {"wall": 0.0, "cpu": 0.0})
        span["wall"] += wall - prev_wall
        span["cpu"] += cpu - prev_cpu
        prev_wall, prev_cpu = wall, cpu
    spans["exit"] = {"wall": exited - prev_wall, "cpu": total_cpu - prev_cpu}
    start = sum(spans.get(k, {}).get("wall", 0.0) for k in START)
    end = sum(spans.get(k, {}).get("wall", 0.0) for k in END)
    spans["command -> first step"] = {"wall": start, "cpu": sum(spans.get(k, {}).get("cpu", 0.0) for k in START)}
    spans["last step -> exit"] = {"wall": end, "cpu": sum(spans.get(k, {}).get("cpu", 0.0) for k in END)}
    return spans


def run_once(config: str, overrides: list[str]) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="tf-startup-") as tmp:
        out = Path(tmp) / "stamps.json"
        launched, children = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, __file__, "--child", str(launched), str(out), config, *overrides,
                               f"output_dir={tmp}/run"], cwd=ROOT, capture_output=True, text=True)
        exited = time.time() - launched
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the whole child's CPU, its exit included
        child_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        if done.returncode:
            raise SystemExit(f"the run failed:\n{done.stderr[-3000:]}")
        record = json.loads(out.read_text(encoding="utf-8"))
    return phases(record["stamps"], exited, child_cpu)


def table(runs: list[dict[str, dict[str, float]]]) -> list[str]:
    lines = ["| phase | wall s (median) | wall min-max | CPU s (median) |", "|---|---:|---:|---:|"]
    for key in (*START, "steps", *END, "command -> first step", "last step -> exit"):
        walls = [r.get(key, {}).get("wall", 0.0) for r in runs]
        cpus = [r.get(key, {}).get("cpu", 0.0) for r in runs]
        cpu_text = f"{statistics.median(cpus):.2f}"
        name = f"**{key}**" if "->" in key else key
        lines.append(f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f}-{max(walls):.2f} | {cpu_text} |")
    return lines


def main() -> None:
    if sys.argv[1:2] == ["--child-imports"]:
        import_only(float(sys.argv[2]))
        return
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[4], sys.argv[5:], float(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--imports", action="store_true", help="time only the imports of a train run (no config "
                        "is run: give any CONFIG); PYTHONPATH=OTHER/src measures another checkout the same way")
    args = parser.parse_args()
    if args.imports:
        for _ in range(args.repeat):
            launched = time.time()
            done = subprocess.run([sys.executable, __file__, "--child-imports", str(launched)], cwd=ROOT,
                                  capture_output=True, text=True, check=True)
            print(done.stdout.strip())
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from env_record import cpu_info, load_average

    load_before = load_average()
    runs = [run_once(args.config, args.overrides) for _ in range(args.repeat)]
    record = {"command": " ".join(["python bench/startup.py", args.config, *args.overrides,
                                   f"--repeat {args.repeat}"]),
              "cpu": cpu_info().get("model"), "load_before": load_before, "load_after": load_average(),
              "nice": os.nice(0), "runs": runs}
    print(f"{record['command']}\nCPU: {record['cpu']}; load average before {load_before}, after "
          f"{record['load_after']}; nice {record['nice']}; {args.repeat} fresh processes")
    print("\n".join(table(runs)))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
