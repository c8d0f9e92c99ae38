"""`tuneforge compare`: run several methods on the same data, seed and step budget, one after another,
each in its own process (so peak RSS is its own and a crash stays contained), and tabulate what each
cost and gained: the seed tutorials' method tables, measured on the user's model and data.

    tuneforge compare examples/quickstart.yaml --methods full,freeze,lora,qlora,ia3,adapter,prefix,prompt
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tuneforge.config.load import REDACTED_HEADER, dump_config
from tuneforge.config.schema import METHOD_CONFIGS, Config
from tuneforge.errors import ConfigError
from tuneforge.fsutil import write_json_atomic, write_text_atomic
from tuneforge.methods import METHODS
from tuneforge.secrets import SECRETS_ENV, redact_config, secret_leaves

STORED = {"adapter_model.safetensors", "bottleneck_adapter.safetensors", "model.safetensors"}


def method_config(cfg: Config, name: str, lr: dict[str, float], out: Path) -> dict[str, Any]:
    """The config for one method: the user's method options carry over to a method of the same kind (lora ->
    qlora share LoraConfig); another method starts from its defaults and trains at its own default learning
    rate (training.learning_rate left null: the run picks the method's default_lr and records it); the config's
    rate is the rate of the config's own method; `--lr method=value` fixes any method's rate."""
    raw = cfg.model_dump(mode="json")
    if name != cfg.method.name:
        new, old = METHOD_CONFIGS[name], type(cfg.method)
        same_kind = issubclass(new, old) or issubclass(old, new)
        raw["method"] = {**raw["method"], "name": name} if same_kind else {"name": name}
        raw["training"]["learning_rate"] = None  # the run uses METHODS[name].default_lr and says so
    if name in lr:
        raw["training"]["learning_rate"] = lr[name]
    raw["output_dir"] = str(out / name)
    raw["resume"], raw["overwrite"] = None, True
    return raw


def stored_bytes(run: Path, metrics: dict) -> tuple[int, str]:
    """What must be kept per task: the adapter file, or the whole model; for a method that saves the whole
    model but trains part of it (freeze), its trainable tensors."""
    train = metrics["train"]
    if METHODS[metrics["method"]].saves_whole_model and train["trainable_params"] < train["total_params"]:
        return train["trainable_params"] * 4, "trainable tensors (fp32), computed"
    files = [p for p in run.iterdir() if p.name in STORED]
    return sum(p.stat().st_size for p in files), "+".join(p.name for p in files)


def _row(name: str, run: Path, seconds: float) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    size, what = stored_bytes(run, metrics)
    before, after, train = metrics.get("eval_before") or {}, metrics["eval_after"], metrics["train"]
    return {
        "method": name, "status": "ok", "trainable_params": train["trainable_params"],
        "trainable_percent": train["trainable_percent"], "stored_mb": size / 2**20, "stored_what": what,
        "peak_rss_mb": train["peak_rss_mb"], "wall_seconds": seconds, "tokens_per_second": train["tokens_per_second"],
        "eval_loss_before": before.get("loss"), "eval_loss_after": after.get("loss"),
        "exact_match_before": before.get("exact_match"), "exact_match_after": after.get("exact_match"),
        **_recipe_cells(metrics.get("recipe") or {}),
    }


def _recipe_cells(recipe: dict) -> dict[str, Any]:
    """The learning rate and epochs a method's run used, and where they came from (config, method default,
    data size)."""
    lr, epochs = recipe.get("learning_rate") or {}, recipe.get("epochs") or {}
    return {"learning_rate": lr.get("value"), "learning_rate_source": lr.get("source"),
            "epochs": epochs.get("value"), "epochs_source": epochs.get("source")}


def run_one(name: str, raw: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train one method in its own process. Its config file has secrets masked, as train's saved config.yaml
    does; the masked values reach the child through the environment (SECRETS_ENV), never the disk."""
    path = out / f"{name}.yaml"
    leaves = secret_leaves(raw)
    header = REDACTED_HEADER if leaves else ""
    write_text_atomic(path, header + yaml.safe_dump(redact_config(raw), sort_keys=False))
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != SECRETS_ENV} | {"PYTHONUNBUFFERED": "1"}
    if leaves:
        env[SECRETS_ENV] = json.dumps(leaves)
    log_path = out / f"{name}.log"
    with log_path.open("w") as log:  # the run's own output goes to the terminal and to the log
        proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "train", str(path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            sys.stderr.write(f"  {name}: {line}")
            log.write(line)
            lines.append(line)
        proc.wait()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = [line.strip() for line in lines if line.strip()][-1:] or [f"exit {proc.returncode}"]
        return {"method": name, "status": f"failed (exit {proc.returncode}): {tail[0][:200]}", "wall_seconds": seconds}
    return _row(name, Path(raw["output_dir"]), seconds)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def render_markdown(rows: list[dict], cfg: Config) -> str:
    head = ("| method | status | learning rate | trainable | % | stored per task (MB) | peak RSS (MB) | wall (s) | "
            "tokens/s | eval loss before -> after | exact match before -> after |")
    budget = cfg.training.max_steps or (f"{cfg.training.epochs} epochs" if cfg.training.epochs
                                        else "epochs sized to the data")
    lines = [f"# tuneforge compare: {cfg.stage} on {cfg.model}", "",
             f"Same data ({cfg.data.train}), seed {cfg.seed}, step budget "
             f"{budget}, batch {cfg.training.batch_size}. Each method trains at its own default learning rate "
             "unless the config (for its own method) or --lr fixed one.", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['status']} |" + " - |" * 9)
            continue
        lines.append(
            f"| {r['method']} | ok | {_lr_cell(r)} | {_fmt(r['trainable_params'])} | "
            f"{_fmt(r['trainable_percent'], 4)} | {_fmt(r['stored_mb'], 2)} | {_fmt(r['peak_rss_mb'], 0)} | "
            f"{_fmt(r['wall_seconds'], 1)} | "
            f"{_fmt(r['tokens_per_second'], 0)} | {_fmt(r['eval_loss_before'])} -> {_fmt(r['eval_loss_after'])} | "
            f"{_fmt(r['exact_match_before'], 2)} -> {_fmt(r['exact_match_after'], 2)} |"
        )
    lines += ["", "![compare](compare.png)", "",
              "Stored per task: the adapter file, or the whole model for full fine-tuning; for freeze, the "
              "trainable tensors' size (fp32). Wall time includes model load and before/after evaluation.", ""]
    return "\n".join(lines)


def _lr_cell(row: dict) -> str:
    if row.get("learning_rate") is None:
        return "-"
    return f"{row['learning_rate']:g} ({row.get('learning_rate_source') or '?'})"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return
    panels = [("trainable_percent", "trainable %", True), ("tokens_per_second", "real tokens/s", False),
              ("peak_rss_mb", "peak RSS (MB)", False), ("eval_loss_after", "eval loss after", False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), dpi=100)
    names = [r["method"] for r in ok]
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        values = [r[key] or 0 for r in ok]
        ax.bar(names, values, color="tab:blue")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
        if log and all(v > 0 for v in values):
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_lr(text: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--lr {item!r}: expected method=learning_rate, e.g. full=5e-5") from None
    return out


def compare(cfg: Config, methods: list[str], lr: dict[str, float], output: Path) -> list[dict]:
    unknown = [m for m in methods + list(lr) if m not in METHOD_CONFIGS]
    if unknown:
        raise ConfigError(f"--methods/--lr: unknown method(s) {unknown}; known: {', '.join(METHOD_CONFIGS)}")
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / "config.yaml", dump_config(cfg))
    rows = []
    for i, name in enumerate(methods, 1):
        print(f"[{i}/{len(methods)}] {name} ...", flush=True)
        row = run_one(name, method_config(cfg, name, lr, output), output)
        print(f"[{i}/{len(methods)}] {name}: {row['status']} in {row['wall_seconds']:.0f}s", flush=True)
        rows.append(row)
        write_json_atomic(output / "compare.json", {"config": redact_config(cfg.model_dump(mode="json")), "rows": rows})
    plot(rows, output / "compare.png")
    write_text_atomic(output / "compare.md", render_markdown(rows, cfg))
    return rows
