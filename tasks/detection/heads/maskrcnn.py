"""Mask R-CNN's mask branch on the FPN design (torchvision's ``maskrcnn_resnet50_fpn`` layout)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

MASK_POOL_SIZE = 14   # torchvision's and detectron2's: 14×14 RoIs, upsampled to 28×28 masks
MASK_HEAD_CONVS = 4


@dataclass
class MaskParts:
    """What Mask R-CNN adds to the FPN head design."""

    roi_pool: MultiScaleRoIAlign
    head: nn.Module
    predictor: nn.Module


def mask_parts(levels: list[str], in_channels: int, num_classes: int, width: int, version: str = "v1") -> MaskParts:
    """RoIAlign 14×14 on the FPN levels RoIs are pooled from, four 3×3 convolutions of ``width``
    channels (with BatchNorm for ``version="v2"``, as ``maskrcnn_resnet50_fpn_v2``), a 2× transposed
    convolution and a 1×1 per-class mask predictor.

    Example:
        >>> p = mask_parts(["p2", "p3", "p4", "p5"], 256, num_classes=3, width=64)
        >>> p.predictor.mask_fcn_logits.out_channels
        3
    """
    return MaskParts(
        roi_pool=MultiScaleRoIAlign(levels, output_size=MASK_POOL_SIZE, sampling_ratio=2),
        head=MaskRCNNHeads(in_channels, [width] * MASK_HEAD_CONVS, dilation=1,
                           norm_layer=nn.BatchNorm2d if version == "v2" else None),
        predictor=MaskRCNNPredictor(width, width, num_classes))
