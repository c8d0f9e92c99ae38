"""Run bias probes on a run (base and tuned) or a plain model, and write bias.json, bias.md, bias.png.

    result = run_bias("runs/quickstart", load_probes(["builtin"]), Path("runs/quickstart/bias"))

A run directory: base = the model named in its config.yaml, tuned = the run (tuneforge.runs.load_run);
a classifier run (stage_info's model_kind, e.g. classify) is scored as a classifier
(tuneforge.predict.load_classifier); a reward run (a scorer) is refused. A model alias or directory that is
not a run is scored alone.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path
from typing import Any

from tuneforge.datatools.bias import METRIC, Probe, grew, score_classifier, score_lm
from tuneforge.errors import ModelError
from tuneforge.fsutil import (
    make_temp_dir,
    move_dir_contents,
    save_figure_atomic,
    write_json_atomic,
    write_text_atomic,
)
from tuneforge.stage_info import stage_info


def _targets(target: str) -> tuple[str, list[tuple[str, Any]]]:
    """(kind, [(column, loader)]): loaders build a scorer lazily, so only one model is in memory at a time."""
    run_dir = Path(target)
    if (run_dir / "config.yaml").is_file():
        from tuneforge.models import load_model, load_tokenizer
        from tuneforge.runs import load_run, run_config

        cfg = run_config(run_dir)
        kind = stage_info(cfg.stage).model_kind
        if kind == "scorer":
            raise ModelError(f"{run_dir}: a {cfg.stage} run scores texts with one reward; bias probes score a "
                             "classifier's labels or a causal LM's likelihoods")
        if kind == "classifier":
            from tuneforge.predict import load_classifier

            return "classifier", [("base", lambda: load_classifier(run_dir, base=True)),
                                  ("tuned", lambda: load_classifier(run_dir))]

        def base():
            return load_model(cfg.model, cfg.trust_remote_code), load_tokenizer(cfg.model, cfg.trust_remote_code)

        def tuned():
            model, tokenizer, _ = load_run(run_dir)
            return model, tokenizer

        return "lm", [("base", base), ("tuned", tuned)]
    from tuneforge.models import load_model, load_tokenizer

    return "lm", [("model", lambda: (load_model(target), load_tokenizer(target)))]


def run_bias(target: str, probes: list[Probe], output: Path, tolerance: float = 0.1,
             device: str | None = None) -> dict[str, Any]:
    """`device`: --device (default: the run's training.device, auto for a plain model); each model scores there."""
    from tuneforge.device import for_command, place

    run_cfg = Path(target) / "config.yaml"
    where = for_command(device, _training_device(run_cfg) if run_cfg.is_file() else None)  # before any load
    kind, loaders = _targets(target)
    scores: dict[str, dict[str, dict]] = {p.name: {} for p in probes}
    for column, load in loaders:
        scorer = load()
        place(scorer.model if kind == "classifier" else scorer[0], where)
        for probe in probes:
            scores[probe.name][column] = (score_classifier(scorer, probe) if kind == "classifier"
                                          else score_lm(*scorer, probe))
        del scorer
        gc.collect()
    result: dict[str, Any] = {"target": target, "kind": kind, "tolerance": tolerance, "probes": {}}
    for probe in probes:
        cols = scores[probe.name]
        entry: dict[str, Any] = {"groups": list(probe.groups), "description": probe.description, **cols,
                                 "items": [{"a": list(a), "b": list(b)} for a, b in zip(probe.items, probe.swapped,
                                                                                          strict=True)]}
        if "tuned" in cols:
            entry["change"] = {m: cols["tuned"][m] - cols["base"][m] for m in METRIC[kind]}
            entry["bias_grew"] = grew(kind, cols["base"], cols["tuned"], tolerance)
        result["probes"][probe.name] = entry
    _write(result, output)
    return result


def _training_device(path: Path) -> str:
    from tuneforge.config.load import load_config

    return load_config(path).training.device


def _write(result: dict, output: Path) -> None:
    tmp = make_temp_dir(output.parent, f".{output.name}.")
    try:
        write_json_atomic(tmp / "bias.json", result)
        write_text_atomic(tmp / "bias.md", render_markdown(result))
        plot(result, tmp / "bias.png")
        move_dir_contents(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def render_markdown(result: dict) -> str:
    kind = result["kind"]
    metrics = METRIC[kind]
    lines = [f"# Bias probes: {result['target']}", ""]
    columns = [c for c in ("base", "tuned", "model") if any(c in p for p in result["probes"].values())]
    if kind == "lm":
        lines += ["Gap = log p(continuation | prompt) with group A's terms minus with group B's, in nats, "
                  "averaged over a probe's items (0 = no preference; > 0 prefers group A)."
                  + (f" Flagged when |mean gap| grows by more than {result['tolerance']} nats."
                     if "tuned" in columns else ""), ""]
    else:
        lines += ["Flip rate = share of items whose predicted label changes when the group terms are swapped; "
                  "shift = total variation between the two predicted distributions."
                  + (f" Flagged when either grows by more than {result['tolerance']}." if "tuned" in columns else ""),
                  ""]
    head = [f"{m} ({c})" for m in metrics for c in columns] + (["flag"] if "tuned" in columns else [])
    lines += ["| probe | groups (A / B) | items | " + " | ".join(head) + " |", "|---" * (3 + len(head)) + "|"]
    for name, p in result["probes"].items():
        cells = [f"{p[c][m]:+.3f}" if m == "mean_gap" else f"{p[c][m]:.3f}" for m in metrics for c in columns]
        flag = (["⚠ bias grew" if p.get("bias_grew") else "ok"] if "tuned" in columns else [])
        lines.append(f"| {name} | {' / '.join(p['groups'])} | {p[columns[0]]['items']} | "
                     + " | ".join(cells + flag) + " |")
    lines += ["", "![bias](bias.png)", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kind = result["kind"]
    metric = "mean_gap" if kind == "lm" else "flip_rate"
    names = list(result["probes"])
    columns = [c for c in ("base", "tuned", "model") if any(c in p for p in result["probes"].values())]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names) + 2), 4), dpi=110)
    x = np.arange(len(names))
    width = 0.8 / len(columns)
    for k, column in enumerate(columns):
        values = [result["probes"][n].get(column, {}).get(metric, 0.0) for n in names]
        ax.bar(x + k * width - 0.4 + width / 2, values, width, label=column)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, names)
    ax.set_ylabel("mean log-likelihood gap A - B (nats)" if kind == "lm" else "label flip rate")
    ax.set_title("counterfactual bias probes, before vs after" if "tuned" in columns else "counterfactual bias probes")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path)
