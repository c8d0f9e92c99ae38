"""From the repetitions' raw figures to the summary, the ratios and the goals (pure functions, so a test can
recompute them from the JSON), and the printed table."""

from __future__ import annotations

import statistics
from typing import Any

# The goals of issue 19, measured side by side in one run. (metric, op, target)
GOALS = {
    "process_speedup_vs_seed-fp32": (">=", 5.0),
    "process_speedup_vs_seed-bf16": (">=", 2.5),
    "process_speedup_vs_trl-cpu": (">=", 2.0),
    "mfu_tuneforge": (">=", 0.45),
    "peak_rss_tuneforge_over_seed-fp32": ("<=", 0.4),
    "eval_drop_tuneforge_over_seed-fp32": (">=", 0.98),
}
FIGURES = ("process_s", "train_s", "tokens_per_s", "mfu", "peak_rss_mb", "eval_loss", "eval_drop", "cpu_s")
MIN_DROP = 0.05  # below this the seed recipe's eval loss has not clearly moved: the quality goal means little


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def derive(rep: dict[str, Any], peak: dict[str, float]) -> dict[str, Any]:
    """The figures computed from one repetition's raw ones: whole-process seconds (the parent's wall time of
    the process minus the benchmark's own eval), real tokens/s over training, MFU = 4 N real tokens/s / peak."""
    out = dict(rep)
    out["process_s"] = rep["process_wall_s"] - rep["eval_s"]
    out["tokens_per_s"] = rep["real_tokens"] / rep["train_s"]
    out["mfu"] = 4 * rep["non_embedding_params"] * out["tokens_per_s"] / peak[rep["settings"]["matmul_dtype"]]
    return out


def summarise(raw: dict[str, list[dict[str, Any]]], peak: dict[str, float]) -> dict[str, Any]:
    """raw: recipe -> its repetitions. Returns per-recipe median/min/max of every figure, ratios, goals."""
    per: dict[str, dict[str, Any]] = {}
    for name, reps in raw.items():
        ok = [derive(r, peak) for r in reps if "error" not in r]
        if ok:
            per[name] = {f: spread([r[f] for r in ok]) for f in FIGURES}
            per[name]["failed_reps"] = len(reps) - len(ok)
    med = {n: {f: v[f]["median"] for f in FIGURES} for n, v in per.items()}
    ratios: dict[str, float] = {}
    if "tuneforge" in med:
        tf = med["tuneforge"]
        for other in med:
            if other != "tuneforge":
                ratios[f"process_speedup_vs_{other}"] = med[other]["process_s"] / tf["process_s"]
                ratios[f"train_speedup_vs_{other}"] = med[other]["train_s"] / tf["train_s"]
                ratios[f"peak_rss_tuneforge_over_{other}"] = tf["peak_rss_mb"] / med[other]["peak_rss_mb"]
                if med[other]["eval_drop"] > 0:
                    ratios[f"eval_drop_tuneforge_over_{other}"] = tf["eval_drop"] / med[other]["eval_drop"]
        ratios["mfu_tuneforge"] = tf["mfu"]
    goals = {}
    for name, (op, target) in GOALS.items():
        if name in ratios:
            v = ratios[name]
            goals[name] = {"value": v, "target": f"{op} {target}", "pass": v >= target if op == ">=" else v <= target}
    bases = [r["eval_loss_base"] for reps in raw.values() for r in reps if "error" not in r]
    checks: dict[str, Any] = {"eval_base_spread": (max(bases) - min(bases)) if bases else None}
    if "seed-fp32" in med:
        seed_drop = med["seed-fp32"]["eval_drop"]
        # The untrained base drops nothing: 0 / seed_drop = 0 fails the quality goal, as a goal must without training.
        base_ratio = 0.0 / seed_drop if seed_drop > 0 else None
        op, target = GOALS["eval_drop_tuneforge_over_seed-fp32"]
        checks["untrained_base_drop_ratio"] = base_ratio
        checks["untrained_base_fails_quality_goal"] = base_ratio is not None and not (
            base_ratio >= target if op == ">=" else base_ratio <= target)
        checks["seed_drop"] = seed_drop
        checks["loss_moved_clearly"] = seed_drop >= MIN_DROP
    return {"recipes": per, "ratios": ratios, "goals": goals, "checks": checks}


def _cell(s: dict[str, float], fmt: str, scale: float = 1.0) -> str:
    return f"{format(s['median'] * scale, fmt)} ({format(s['min'] * scale, fmt)}-{format(s['max'] * scale, fmt)})"


def table(summary: dict[str, Any], settings: dict[str, dict[str, Any]]) -> str:
    cols = [("process s", "process_s", ".1f", 1), ("train s", "train_s", ".1f", 1),
            ("real tok/s", "tokens_per_s", ".1f", 1), ("MFU %", "mfu", ".1f", 100),
            ("peak RSS MB", "peak_rss_mb", ".0f", 1), ("eval loss", "eval_loss", ".4f", 1),
            ("eval drop", "eval_drop", ".4f", 1)]
    lines = ["| recipe | dtype | " + " | ".join(c[0] for c in cols) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in cols) + " |"]
    for name, s in summary["recipes"].items():
        cells = [_cell(s[key], fmt, scale) for _, key, fmt, scale in cols]
        lines.append(f"| {name} | {settings.get(name, {}).get('matmul_dtype', '?')} | " + " | ".join(cells) + " |")
    lines.append("median (min-max) over repetitions; process s = whole process minus the benchmark's own eval")
    for name, v in summary["ratios"].items():
        lines.append(f"ratio {name}: {v:.3f}")
    for name, g in summary["goals"].items():
        lines.append(f"goal {name} {g['target']}: {g['value']:.3f} -> {'PASS' if g['pass'] else 'FAIL'}")
    c = summary["checks"]
    if c.get("untrained_base_drop_ratio") is not None:
        verdict = "FAILS" if c["untrained_base_fails_quality_goal"] else "PASSES (broken)"
        lines.append("check: the untrained base's eval-loss drop over seed-fp32's = "
                     f"{c['untrained_base_drop_ratio']:.2f} -> the quality goal {verdict}"
                     " without training, as it must")
    if c.get("loss_moved_clearly") is False:
        lines.append(f"WARNING: seed-fp32's eval loss dropped only {c['seed_drop']:.4f} (< {MIN_DROP}): too few "
                     "steps for the quality goal to mean much")
    if c.get("eval_base_spread") is not None:
        lines.append(f"check: base eval loss equal across recipes and repetitions (spread {c['eval_base_spread']:.2e})")
    return "\n".join(lines)
