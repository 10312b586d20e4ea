"""Confusion-matrix PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def save_confusion_matrix(cm: np.ndarray, classes: list[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    side = min(14, 3 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:  # labels and counts stay legible up to about 30 classes
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix {title}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
