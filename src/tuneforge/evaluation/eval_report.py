"""Write what `tuneforge eval` found: eval.json (metrics per model), rows.jsonl (every generation or
prediction), eval.png (metric bars), eval.md and a self-contained eval.html (the plot inlined), all into a
temporary directory first and then moved into place.

    write_outputs(Path("runs/quickstart/eval-eval"), summary, rows)
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from tuneforge.evaluation.metrics import normalize
from tuneforge.evaluation.request import rows_note
from tuneforge.fsutil import make_temp_dir, move_dir_contents
from tuneforge.report import html as h

LOWER_IS_BETTER = {"loss", "perplexity", "seconds"}
NOT_SCORES = {"loss", "perplexity", "seconds", "supervised_tokens"}
INPUT_KEYS = ("question", "prompt", "reference", "text", "text_pair", "label")


def input_keys(rows: list[dict]) -> list[str]:
    """The input columns the tables show: the question a person asked rather than the rendered prompt (whose
    start is the template's system prompt, the same on every row) when the rows carry one."""
    first = rows[0] if rows else {}
    return [k for k in INPUT_KEYS if k in first and not (k == "prompt" and "question" in first)]


def metric_names(models: dict[str, dict]) -> list[str]:
    names: list[str] = []
    for metrics in models.values():
        names += [k for k, v in metrics.items() if isinstance(v, (int, float)) and k not in names]
    return names


def differing(rows: list[dict], models: list[str]) -> list[dict]:
    """Rows where the models' outputs differ (whitespace-normalised); every row when there is one model."""
    if len(models) < 2:
        return rows
    return [r for r in rows if len({normalize(str(r[m])) for m in models}) > 1]


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _change(name: str, base: float, tuned: float) -> tuple[str, str]:
    delta = tuned - base
    if name in NOT_SCORES - {"loss", "perplexity"} or delta == 0:
        return _fmt(delta), ""
    better = (delta < 0) == (name in LOWER_IS_BETTER)
    return f"{delta:+.4f}", "better" if better else "worse"


def plot_metrics(models: dict[str, dict]) -> bytes:
    """Grouped bars: 0-1 scores on the left, loss on the right (different scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(models)
    scores = [m for m in metric_names(models) if m not in NOT_SCORES]
    panels = [p for p in (scores, ["loss"] if any("loss" in m for m in models.values()) else []) if p]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 + 1.2 * len(scores), 3.6), dpi=110, squeeze=False,
                             gridspec_kw={"width_ratios": [len(p) + 1 for p in panels] or [1]})
    width = 0.8 / max(len(names), 1)
    for ax, metrics in zip(axes[0], panels, strict=False):
        for k, name in enumerate(names):
            values = [models[name].get(m, 0.0) for m in metrics]
            bars = ax.bar([i + k * width for i in range(len(metrics))], values, width, label=name)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(metrics))], metrics)
        ax.set_ylim(0, 1.1 if metrics is scores else None)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _md_cell(text: object, limit: int = 200) -> str:
    text = " ".join(str("" if text is None else text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "*(empty)*"


def render_markdown(summary: dict, rows: list[dict], images: list[str]) -> str:
    models = summary["models"]
    names = list(models)
    lines = [f"# tuneforge eval: {summary['target']}", "",
             f"Data `{summary['data']}`: {rows_note(summary)}, stage {summary['stage']}, precision "
             f"{summary.get('precision', '-')}.", "", "| metric | " + " | ".join(names)
             + (" | change |" if len(names) == 2 else " |"), "|---" * (len(names) + 1 + (len(names) == 2)) + "|"]
    for m in metric_names(models):
        vals = [models[n].get(m) for n in names]
        line = f"| {m} | " + " | ".join(_fmt(v) for v in vals)
        if len(names) == 2 and None not in vals:
            line += f" | {_change(m, vals[0], vals[1])[0]}"
        lines.append(line + " |")
    lines += ["", *(f"![{Path(name).stem}]({name})" for name in images), ""]
    shown = differing(rows, names)
    keys = input_keys(rows)
    title = "Where the models differ" if len(names) == 2 else "Outputs"
    lines += [f"## {title} ({len(shown)} of {len(rows)} rows)", "",
              "| # | " + " | ".join(keys + names) + " |", "|---" * (len(keys) + len(names) + 1) + "|"]
    for i, r in enumerate(shown, 1):
        lines.append(f"| {i} | " + " | ".join(_md_cell(r.get(k)) for k in keys + names) + " |")
    return "\n".join(lines) + "\n"


def render_html(summary: dict, rows: list[dict], images: dict[str, bytes]) -> str:
    models = summary["models"]
    names = list(models)
    two = len(names) == 2
    table_rows = []
    for m in metric_names(models):
        vals = [models[n].get(m) for n in names]
        cells = [h.cell(m)] + [h.cell(_fmt(v), "num") for v in vals]
        if two and None not in vals:
            text, cls = _change(m, vals[0], vals[1])
            cells.append(h.cell(text, f"num {cls}".strip()))
        table_rows.append(cells)
    shown = differing(rows, names)
    keys = input_keys(rows)
    gen_rows = []
    for i, r in enumerate(shown, 1):
        ref = r.get("reference", r.get("label"))
        gen_rows.append([h.cell(i)] + [h.cell(r.get(k), pre=True) for k in keys] + [
            h.cell(r[n], "hit" if ref is not None and normalize(str(r[n])) == normalize(str(ref)) else "", pre=True)
            for n in names])
    title = "Where the models differ" if two else "Outputs"
    return h.page(f"tuneforge eval: {summary['target']}", [
        h.heading(f"tuneforge eval: {summary['target']}", 1),
        h.paragraph(f"Data {summary['data']}: {rows_note(summary)}, stage {summary['stage']}, "
                    f"precision {summary.get('precision', '-')}.", "meta"),
        h.heading("Metrics"), h.table(["metric", *names, *(["change"] if two else [])], table_rows),
        *(h.image(png, Path(name).stem) for name, png in images.items()),
        h.heading(f"{title} ({len(shown)} of {len(rows)} rows)"),
        h.paragraph("Green: equal to the reference (whitespace-normalised).", "meta"),
        h.table(["#", *keys, *names], gen_rows),
    ])


def write_outputs(output: Path, summary: dict, rows: list[dict], images: dict[str, bytes] | None = None) -> None:
    """`images`: more PNGs (file name -> bytes) shown after the metric bars, e.g. confusion matrices."""
    images = {"eval.png": plot_metrics(summary["models"]), **(images or {})}
    tmp = make_temp_dir(output.parent, f".{output.name}.")
    try:
        (tmp / "eval.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        (tmp / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for name, png in images.items():
            (tmp / name).write_bytes(png)
        (tmp / "eval.md").write_text(render_markdown(summary, rows, list(images)))
        (tmp / "eval.html").write_text(render_html(summary, rows, images))
        move_dir_contents(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
