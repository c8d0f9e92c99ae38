"""The report pieces the RL stages (ppo, grpo) share beside what the stage skeleton writes: the prompt
format's name for template.json, an evaluation without its samples for metrics.json, a reward-and-KL plot,
samples.jsonl and the report's table of sampled completions, before and after.

    write_samples(out, before["samples"], after["samples"])
    section = "\n".join(["## PPO", *samples_table(before_samples, after_samples, questions, title)])
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.config.schema import Config
from tuneforge.fsutil import save_figure_atomic, write_text_atomic
from tuneforge.report.write import _cell


def template_name(cfg: Config, tokenizer) -> str | None:
    """What template.json calls the prompt format (rl.prompts renders with it): None for plain text."""
    if cfg.data.template == "auto" and not tokenizer.chat_template:
        return None
    return "alpaca" if cfg.data.template == "alpaca" else "chat"


def summary(result: dict) -> dict | None:
    """An evaluation without its samples (those go to samples.jsonl and the report)."""
    return {k: v for k, v in result.items() if k != "samples"} or None


def question(example) -> str:
    """What a reader wants to see of a prompt: the text, or the last message of a conversation."""
    return example.prompt if isinstance(example.prompt, str) else example.prompt[-1]["content"]


def plot_reward_kl(history: list[dict], path: Path, reward_key: str, kl_key: str, xlabel: str, reward_label: str,
                   kl_label: str) -> None:
    """Reward above, KL below (left out when the history has none), per step of `history`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl = [(h["step"], h[kl_key]) for h in history if h.get(kl_key) is not None]
    fig, axes = plt.subplots(2 if kl else 1, 1, figsize=(7, 5 if kl else 3), dpi=110, sharex=True, squeeze=False)
    axes[0][0].plot([h["step"] for h in history], [h[reward_key] for h in history], color="tab:green")
    axes[0][0].set_ylabel(reward_label)
    if kl:
        axes[1][0].plot(*zip(*kl, strict=True), color="tab:red")
        axes[1][0].set_ylabel(kl_label)
    axes[-1][0].set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def samples_table(before: list[dict], after: list[dict], questions: list[str], title: str) -> list[str]:
    """Markdown rows: each eval prompt's sampled completion and reward, before and after."""
    if not after:
        return []
    lines = [f"### {title}", "", "| # | prompt | before | reward | after | reward |", "|---|---|---|---|---|---|"]
    for i, (prompt, b, a) in enumerate(zip(questions, before or [{}] * len(after), after, strict=False), 1):
        lines.append(f"| {i} | {_cell(prompt, 80)} | {_cell(b.get('completion', '-'))} | "
                     f"{b.get('reward', float('nan')):.3f} | {_cell(a['completion'])} | {a['reward']:.3f} |")
    return lines


def write_samples(out: Path, before: list[dict], after: list[dict]) -> None:
    """samples.jsonl: the sampled completions of the eval prompts, each marked "when": before / after."""
    samples = [{"when": when, **s} for when, rows in (("before", before), ("after", after)) for s in rows]
    write_text_atomic(out / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
