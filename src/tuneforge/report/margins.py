"""The margin histogram of the preference stages: reward's r(chosen) - r(rejected) and dpo's implicit reward
margins on the eval pairs, one series per model (base, tuned), on shared bins.

    plot_margins({"base": [...], "tuned": [...]}, out / "margins.png")
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.fsutil import save_figure_atomic


def plot_margins(margins: dict[str, list[float]], path: Path,
                 xlabel: str = "reward margin r(chosen) - r(rejected), eval pairs") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5))
    every = [v for values in margins.values() for v in values]
    bins = np.linspace(min(every), max(every), 41) if every else 40  # shared bins: the runs compare bar by bar
    for name, values in margins.items():
        ax.hist(values, bins=bins, alpha=0.6, label=name)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel=xlabel, ylabel="pairs")
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path)
