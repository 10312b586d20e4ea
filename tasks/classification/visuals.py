"""Confusion matrix and prediction grid (PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

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


def save_prediction_grid(paths: Sequence[Path] | np.ndarray, predictions: Sequence[tuple[int, float, int]],
                         classes: list[str], path: Path, title: str = "", n: int = 16, side: int = 160) -> None:
    """A grid of validation images with their true and predicted labels: the misclassified first (most
    confident first), then correct ones; ``predictions`` holds ``(predicted, score, true)`` per image.
    ``paths``: image files, or the images themselves (``N×H×W×C`` uint8, C = 1 or 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    order = sorted(range(len(predictions)), key=lambda i: (predictions[i][0] == predictions[i][2], -predictions[i][1]))
    shown = order[:n]
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    wrong = sum(p != t for p, _, t in predictions)
    for ax, i in zip(axes.flat, shown):
        pred, score, true = predictions[i]
        if isinstance(paths, np.ndarray):
            ax.imshow(paths[i][..., 0] if paths.shape[-1] == 1 else paths[i], cmap="gray", vmin=0, vmax=255)
        else:
            with Image.open(paths[i]) as im:
                im = im.convert("RGB")
                im.thumbnail((side, side))
                ax.imshow(np.asarray(im))
        ok = pred == true
        ax.set_title(f"true: {classes[true]}\npred: {classes[pred]} ({score:.2f})", fontsize=8,
                     color="darkgreen" if ok else "crimson")
    fig.suptitle(f"predictions {title}: {wrong} of {len(predictions)} misclassified (shown first)".strip(),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
