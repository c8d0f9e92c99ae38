"""Write what a run tells: metrics.json (the contract), a loss-curve PNG and report.md with a
base-vs-tuned table of generations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.config.load import run_header
from tuneforge.fsutil import save_figure_atomic, write_json_atomic, write_text_atomic
from tuneforge.report.learning import learning_lines
from tuneforge.train.recipe import warmup_text


def plot_loss(history: list[dict], evals: list[dict], before: dict | None, after: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], label="train loss", color="tab:blue", alpha=0.8)
    last = [{"step": steps[-1], **after}] if after and steps else []
    points = ([{"step": 0, **before}] if before else []) + evals + last
    points = [p for p in points if "loss" in p]  # an RL stage's evaluations have no loss
    if points:
        ax.plot([p["step"] for p in points], [p["loss"] for p in points], "o--", color="tab:orange", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per supervised token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path)


def _cell(text: str, limit: int = 160, keep_end: int = 0) -> str:
    """One table cell: whitespace collapsed, cut to `limit` characters; `keep_end` keeps that many characters of
    the end too (a question's shared instruction comes first, what tells rows apart last)."""
    text = " ".join(text.split())
    if len(text) > limit:
        head = limit - 1 - keep_end
        text = text[:head] + "…" + (text[-keep_end:] if keep_end else "")
    return text.replace("|", "\\|") or "*(empty)*"


def _marked(output: str, reference: str | None) -> str:
    """A generation cell, ticked when it matches the reference exactly (whitespace-normalised)."""
    hit = reference is not None and " ".join(output.split()) == " ".join(reference.split())
    return ("✅ " if hit else "") + _cell(output)


def question(generation: dict, limit: int = 100) -> str:
    """What a reader asks: the generation's "question" (the last user turn, or a document's start); for an
    older record without one, the end of the rendered prompt, where the question sits after the template's
    system prompt."""
    if generation.get("question"):
        return generation["question"]
    prompt = " ".join(generation.get("prompt", "").split())
    return prompt if len(prompt) <= limit else "…" + prompt[-(limit - 1) :]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def recipe_lines(recipe: dict | None) -> list[str]:
    """The learning rate, epochs and schedule the run used, and why (given, the method's default, sized to the data)."""
    if not recipe:
        return []
    lines = ["", "## Recipe", "", "| key | value | why |", "|---|---|---|"]
    for key in ("learning_rate", "epochs"):
        if key in recipe:
            lines.append(f"| training.{key} | {recipe[key]['value']:g} | {recipe[key]['why']} |")
    if "lr_scheduler" in recipe:
        s = recipe["lr_scheduler"]
        warmup = warmup_text(s["warmup_ratio"], s.get("warmup_steps"))  # metrics.json before 'warmup_steps': None
        lines.append(f"| training.lr_scheduler | {s['value']} ({warmup}) | {s['why']} |")
    return lines


def eval_rows_lines(eval_data: dict) -> list[str]:
    """How many of the eval rows the metrics cover (eval.max_samples / eval.generate_samples caps)."""
    lines = []
    if "scored" in eval_data:
        lines.append(f"Eval loss and metrics scored on {eval_data['scored']} eval rows"
                     + ("" if eval_data["scored"].split(" of ")[0] == str(eval_data["records_available"])
                        else " (eval.max_samples; null scores all)") + ".")
    if "generated" in eval_data:
        lines.append(f"Generation metrics (exact_match, token_f1) on {eval_data['generated']} eval rows "
                     "(eval.generate_samples).")
    return ["", *lines] if lines else []


def corpus_lines(data: dict) -> list[str]:
    """How much of the corpus the training examples hold, and each mixed source's part (metrics.json's data)."""
    train = data.get("train") or {}
    lines = []
    if train.get("sources"):
        lines.append(f"Training mix of {train['tokens']:,} tokens (sources repeated or subsampled by weight) from "
                     f"{train['corpus_tokens']:,} corpus tokens:")
    elif train.get("corpus_tokens"):
        lines.append(f"Training examples hold {train['tokens']:,} of the {train['corpus_tokens']:,} tokens the "
                     f"training data tokenized to ({train['truncated']} samples truncated).")
    for s in train.get("sources") or []:
        lines.append(f"- {s['path']}: weight {s['weight']}, {s['in_mix']:,} sequences ({100 * s['share']:.1f}%), "
                     f"{s['tokens_in_mix']:,} tokens in the mix, {s.get('tokens_trained', 0):,} trained")
    return ["", *lines] if lines else []


def render_report(metrics: dict, generations: list[dict], cfg_text: str, extra: str = "") -> str:
    before, after, train = metrics.get("eval_before") or {}, metrics.get("eval_after") or {}, metrics["train"]
    lines = [f"# tuneforge run: {metrics['stage']} / {metrics['method']} on {metrics['model']}", ""]
    lines += ["## Before vs after", "", "| metric | base | tuned | change |", "|---|---|---|---|"]
    for key in after:
        if isinstance(after[key], (int, float)) and key in before:
            lines.append(f"| {key} | {_fmt(before[key])} | {_fmt(after[key])} | {_fmt(after[key] - before[key])} |")
    lines += ["", "![loss curve](loss.png)", "", "## Cost", "", "| | |", "|---|---|"]
    for key in ("steps", "wall_seconds", "train_seconds", "tokens_per_second", "supervised_tokens_per_second",
                "samples_per_second", "peak_rss_mb", "trainable_params", "total_params", "trainable_percent",
                "precision", "model_flops"):
        if key in train:
            lines.append(f"| {key} | {_fmt(train[key])} |")
    data = metrics.get("data", {})
    if data:
        lines += ["", "## Data", "", "| split | records | examples | truncated | dropped (over length) "
                  "| dropped (no supervised) | mean length |", "|---|---|---|---|---|---|---|"]
        for split, s in data.items():
            lines.append(f"| {split} | {s['records']} | {s['examples']} | {s['truncated']} | "
                         f"{s['dropped_overlength']} | {s['dropped_no_supervised']} | {s.get('length_mean', '')} |")
        lines += eval_rows_lines(data.get("eval") or {}) + corpus_lines(data)
    lines += recipe_lines(metrics.get("recipe")) + learning_lines(metrics.get("learning"))
    if generations:
        lines += ["", "## Generations on eval prompts (greedy)", "", "| # | question | reference | base | tuned |",
                  "|---|---|---|---|---|"]
        for i, g in enumerate(generations, 1):
            ref = g.get("reference")
            asked = _cell(question(g), 120, keep_end=70)
            lines.append(f"| {i} | {asked} | {_cell(ref or '')} | {_marked(g['base'], ref)} | "
                         f"{_marked(g['tuned'], ref)} |")
    if extra:  # a stage's own section (e.g. classification: per-class table, confusion matrices)
        lines += ["", extra]
    lines += ["", "## Config", "", "```yaml", cfg_text.rstrip(), "```", ""]
    return "\n".join(lines)


def write_report(output_dir: Path, metrics: dict, generations: list[dict], history: list[dict], evals: list[dict],
                 cfg_text: str, extra: str = "") -> None:
    if history:
        plot_loss(history, evals, metrics.get("eval_before"), metrics.get("eval_after"), output_dir / "loss.png")
    write_text_atomic(output_dir / "report.md", render_report(metrics, generations, cfg_text, extra))
    write_json_atomic(output_dir / "metrics.json", {**run_header(), **metrics})  # tuneforge_version, run_format
