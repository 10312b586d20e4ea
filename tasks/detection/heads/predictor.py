"""The last box layers (classifier + class-specific regressor), linear or cosine, and TFA's row transfer.

Both predictors name their layers ``cls_score`` and ``bbox_pred`` (torchvision's
``FastRCNNPredictor`` layout), so checkpoints move between them row by row.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BoxPredictor(nn.Module):
    """Box features ``(N, in_dim)`` → class logits ``(N, num_classes)`` and deltas ``(N, 4 · num_classes)``.

    Outputs are float32 under autocast: torchvision decodes boxes in the deltas' dtype.

    Args:
        in_dim: box head output size.
        num_classes: including the background (index 0).
        cosine_scale: ``None`` for a linear classifier; else logits are ``scale · cos(x, w_c)``
            (TFA's cosine-similarity classifier, which has no bias).

    Example:
        >>> p = BoxPredictor(512, num_classes=4, cosine_scale=20.0)
        >>> [tuple(t.shape) for t in p(torch.randn(8, 512))]
        [(8, 4), (8, 16)]
    """

    def __init__(self, in_dim: int, num_classes: int, cosine_scale: float | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be ≥ 2, got {num_classes}")
        self.cosine_scale = cosine_scale
        self.cls_score = nn.Linear(in_dim, num_classes, bias=cosine_scale is None)
        self.bbox_pred = nn.Linear(in_dim, num_classes * 4)
        # detectron2's initialisation: small logits and deltas, so early RoI losses stay sane.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    @property
    def num_classes(self) -> int:
        return self.cls_score.out_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        if self.cosine_scale is None:
            scores = self.cls_score(x)
        else:
            scores = self.cosine_scale * F.linear(F.normalize(x, dim=1), F.normalize(self.cls_score.weight, dim=1))
        return scores.float(), self.bbox_pred(x).float()


def transfer_rows(predictor: BoxPredictor, state: Mapping[str, torch.Tensor], src_names: Sequence[str],
                  dst_names: Sequence[str]) -> list[str]:
    """Copy the background row and the rows of classes whose name is in both lists; return those names.

    ``state`` holds a predictor's ``cls_score.*`` / ``bbox_pred.*`` tensors; the names exclude the
    background. A linear source's bias is dropped when the target is cosine (it has none).
    """
    src = {n: i + 1 for i, n in enumerate(src_names)}
    pairs = [(0, 0)] + [(src[n], j + 1) for j, n in enumerate(dst_names) if n in src]
    with torch.no_grad():
        for name, layer, width in (("cls_score", predictor.cls_score, 1), ("bbox_pred", predictor.bbox_pred, 4)):
            for s, d in pairs:
                layer.weight[d * width:(d + 1) * width] = state[f"{name}.weight"][s * width:(s + 1) * width]
                if layer.bias is not None and f"{name}.bias" in state:
                    layer.bias[d * width:(d + 1) * width] = state[f"{name}.bias"][s * width:(s + 1) * width]
    return [n for n in dst_names if n in src]
