"""Dataset-level segmentation metrics from summed confusion counts (``smp.metrics``).

Counts are summed over the whole set before any ratio is taken, so a metric is the dataset's,
not a mean of per-batch values. A class absent from both truth and prediction has no IoU (NaN)
and is left out of the means.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


class SegmentationMetrics:
    """Accumulate true/false positives/negatives per class; :meth:`compute` gives the metrics.

    Args:
        num_classes: number of classes.
        ignore_index: target value excluded from every count (must not be a class index).
        class_names: names used in the per-class keys (``iou/<name>``).

    Example:
        >>> m = SegmentationMetrics(2, ignore_index=255)
        >>> m.update(torch.tensor([[[0, 1], [1, 1]]]), torch.tensor([[[0, 1], [0, 255]]]))
        >>> round(m.compute()["miou"], 3)
        0.5
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names) if class_names else [f"class{i}" for i in range(num_classes)]
        self.stats = torch.zeros(4, num_classes, dtype=torch.long)  # tp, fp, fn, tn

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred`` and ``target``: ``(B, H, W)`` class indices."""
        import segmentation_models_pytorch as smp

        stats = smp.metrics.get_stats(pred.long().cpu(), target.long().cpu(), mode="multiclass",
                                      num_classes=self.num_classes, ignore_index=self.ignore_index)
        self.stats += torch.stack([s.sum(0) for s in stats])

    def compute(self) -> dict[str, float]:
        import segmentation_models_pytorch as smp

        tp, fp, fn, tn = (s[None] for s in self.stats)  # (1, C): the whole set as one "image"
        nan = float("nan")
        iou = smp.metrics.iou_score(tp, fp, fn, tn, reduction="none", zero_division=nan)[0]
        dice = smp.metrics.f1_score(tp, fp, fn, tn, reduction="none", zero_division=nan)[0]
        # Micro recall = correct pixels / labelled pixels: pixel accuracy.
        acc = smp.metrics.recall(tp, fp, fn, tn, reduction="micro", zero_division=nan)
        out = {"miou": _nanmean(iou), "dice": _nanmean(dice), "pixel_acc": float(acc)}
        out.update({f"iou/{n}": float(v) for n, v in zip(self.class_names, iou)})
        return out


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan
