"""Classification metrics from label ids (scikit-learn does the arithmetic) and the confusion-matrix plot.

    scores = classification_metrics(y_true, y_pred, labels)
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.fsutil import save_figure_atomic


def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    """accuracy, macro-F1, per-class precision/recall/F1/support, and the confusion matrix (rows = true)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(support[i])} for i, label in enumerate(labels)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def majority_baseline(train_counts: dict[str, int], y_true: list[int], labels: list[str]) -> float:
    """Accuracy of always answering the most frequent training label."""
    top = labels.index(max(labels, key=lambda label: train_counts.get(label, 0)))
    return sum(y == top for y in y_true) / max(len(y_true), 1)


def plot_confusion(matrices: dict[str, list[list[int]]], labels: list[str], path: Path) -> None:
    """One panel per model (e.g. base / tuned), counts in the cells; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.8), dpi=110, squeeze=False)
    for ax, (title, matrix) in zip(axes[0], matrices.items(), strict=True):
        ax.imshow(matrix, cmap="Blues")
        ax.set_title(title)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        top = max((v for row in matrix for v in row), default=0)
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.tight_layout()
    save_figure_atomic(fig, path)
