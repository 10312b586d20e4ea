"""One-stage designs on P3–P7 (FPN with convolutional P6/P7): RetinaNet and FCOS, torchvision's.

Both classify and regress densely on every level; there are no proposals and no RoIs.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator

from resnet_backbones import UserError, create_backbone

from . import ASPECT_RATIOS

DENSE_LEVELS = ("c3", "c4", "c5")
SCORE_THRESH = 0.05  # keep low-scoring detections for AP (torchvision's FCOS default is 0.2)


def dense_backbone(backbone: str, weights: str | None, freeze_stages: int, norm: str, fpn_channels: int,
                   extra_from: str) -> nn.Module:
    """P3…P7 of ``fpn_channels``; P6 from P5 (FCOS, torchvision RetinaNet v1) or C5 (RetinaNet paper)."""
    return create_backbone(backbone, weights=weights, out_features=DENSE_LEVELS, freeze_stages=freeze_stages,
                           norm=norm, fpn=True, fpn_channels=fpn_channels, fpn_extra="p6p7",
                           fpn_extra_from=extra_from)


def retinanet_anchors(anchor_sizes: Sequence[int], levels: int) -> AnchorGenerator:
    """Three octave scales (2^0, 2^⅓, 2^⅔) × three ratios per level, as the RetinaNet paper."""
    if len(anchor_sizes) != levels:
        raise UserError(f"--anchor-sizes needs one base size per level P3…P7 ({levels} values), "
                        f"got {list(anchor_sizes)}")
    sizes = tuple((int(s), int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in anchor_sizes)
    return AnchorGenerator(sizes, (ASPECT_RATIOS,) * levels)


def fcos_anchors(strides: Sequence[int]) -> AnchorGenerator:
    """FCOS places one point per location; its "anchor" size is the level's stride (torchvision)."""
    return AnchorGenerator(tuple((int(s),) for s in strides), ((1.0,),) * len(strides))
