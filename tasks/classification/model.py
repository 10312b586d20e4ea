"""Backbone → global average pool → classifier (linear or cosine / prototype)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    """Logits = scale · cos(feature, class weight), with a learnt scale (Baseline++, Chen et al. 2019).

    With weights set to class means this is the prototype (nearest class mean) classifier; trained
    further it is weight imprinting. :meth:`with_margin` subtracts a margin from the true class's
    cosine while training (CosFace), which spreads the classes apart on the sphere.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) * 0.01)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))

    def with_margin(self, logits: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
        """``logits`` from :meth:`forward` with ``scale · margin`` taken off each sample's true class."""
        return logits - self.scale * margin * F.one_hot(target, logits.shape[1]).to(logits.dtype)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


HEADS = ("linear", "cosine", "prototype", "imprint")
POOLS = ("avg", "max")


class ImageClassifier(nn.Module):
    """``backbone`` must output ``c5``; its channel count is read from ``feature_info``.

    Example:
        >>> from resnet_backbones import create_backbone
        >>> m = ImageClassifier(create_backbone("resnet18", None, out_features=("c5",)), 3)
        >>> m(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 3])
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "linear", drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        dim = backbone.feature_info[-1].channels
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        # on the pooled features, before the head (timm's drop_rate); nothing at all on the step when off
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(dim, num_classes) if head == "linear" else CosineClassifier(dim, num_classes)

    def features(self, x: torch.Tensor, levels: Sequence[str] = ("c5",), pool: str = "avg") -> torch.Tensor:
        """Globally pooled ``c5`` (what the head sees); with several ``levels`` (e.g. ``("c4", "c5")``,
        which the backbone must output) each pooled level is L2-normalised and they are concatenated,
        so that every level weighs the same in a cosine similarity. ``pool``: ``"avg"`` or ``"max"``."""
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        maps = self.backbone(x)
        pooled = [global_pool(maps[k]) if pool == "avg" else torch.flatten(F.adaptive_max_pool2d(maps[k], 1), 1)
                  for k in levels]
        return pooled[0] if len(pooled) == 1 else torch.cat([F.normalize(p, dim=1) for p in pooled], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 2-D input is an already-computed feature batch (frozen-backbone feature cache).
        if x.dim() == 2:
            return self.head(self.drop(x))
        return self.head(self.drop(global_pool(self.backbone(x)["c5"])))  # features(x), in words TorchScript compiles

    @torch.no_grad()
    def set_prototypes(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Class-mean of L2-normalised features → cosine head weights (imprinting)."""
        feats = F.normalize(feats.float(), dim=1)
        w = torch.zeros_like(self.head.weight)
        w.index_add_(0, labels.to(w.device), feats.to(w.device))
        self.head.weight.copy_(F.normalize(w, dim=1))


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``x`` (N, C, H, W) moved by ``dx`` pixels right and ``dy`` down, the border repeated (as the
    ``shift`` training augmentation fills it).

    >>> shifted(torch.arange(4.).view(1, 1, 1, 4), 1, 0).flatten().tolist()
    [0.0, 0.0, 1.0, 2.0]
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top:top + h, left:left + w]


@torch.no_grad()
def extract_features(model: ImageClassifier, loader, rt, levels: tuple[str, ...] = ("c5",), pool: str = "avg",
                     tta_shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (see :meth:`ImageClassifier.features`) and labels of a whole loader (model in eval mode).

    ``tta_shift=k`` averages each image's features over three views (test-time augmentation, three
    forward passes per image): as it is and moved by ``k`` pixels diagonally each way. Measured on
    Omniglot (docs/benchmarks.md): diagonal moves beat the same number of horizontal ones, and
    three views gave most of what five did.
    """
    moves = [(0, 0)] + ([(tta_shift, tta_shift), (-tta_shift, -tta_shift)] if tta_shift else [])
    was = model.training
    model.eval()
    feats, labels = [], []
    for x, y in loader:
        x = rt.to_device(x)
        with rt.autocast():
            views = [model.features(shifted(x, dx, dy), levels, pool).float() for dx, dy in moves]
        feats.append(torch.stack(views).mean(0).cpu())
        labels.append(y)
    model.train(was)
    return torch.cat(feats), torch.cat(labels)
