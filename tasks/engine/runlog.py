"""Per-epoch metrics as JSONL and CSV, and a PNG of the curves, rewritten from the history.

Rewriting from the checkpoint's history (not appending) keeps the files right after a resume.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

NON_CURVES = {"epoch", "time_s", "lr"}


def write_history(run_dir: Path, history: list[dict], best_epoch: int | None = None, files: bool = True) -> None:
    """``metrics.jsonl`` and ``metrics.csv`` (when ``files``) and ``curves.png``."""
    run_dir = Path(run_dir)
    if files:
        with open(run_dir / "metrics.jsonl", "w") as f:
            for rec in history:
                f.write(json.dumps(rec) + "\n")
        keys = list(dict.fromkeys(k for rec in history for k in rec))
        with open(run_dir / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(history)
    if history:
        plot_curves(history, run_dir / "curves.png", best_epoch)


def plot_curves(history: list[dict], path: Path, best_epoch: int | None = None) -> None:
    """Losses on a log axis (they fall by orders of magnitude; a linear axis flattens everything after the
    first epochs) and metrics, each with a dashed line at the best epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in dict.fromkeys(k for r in history for k in r)
            if k not in NON_CURVES and all(isinstance(r.get(k, 0.0), (int, float)) for r in history)]
    losses = [k for k in keys if "loss" in k]
    metrics = [k for k in keys if k not in losses]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, group, title in ((axes[0], losses, "loss"), (axes[1], metrics, "metrics")):
        for k in group:
            pts = [(r["epoch"], r[k]) for r in history if k in r and not math.isnan(r[k])]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=k)
        if group is losses and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()) and ax.get_lines():
            ax.set_yscale("log")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
