"""ResNet-C4 design (detectron2 ``Res5ROIHeads``): RPN and RoIAlign on C4, stage 5 is the box head."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from resnet_backbones import create_backbone
from resnet_backbones.features import by_name

from . import ASPECT_RATIOS, FP32RPNHead, HeadParts

class Res5BoxHead(nn.Module):
    """Pooled C4 RoIs ``(N, C4, 14, 14)`` → the backbone's stage 5 → global average → ``(N, C5)``.

    Args:
        res5: the backbone's ``layer4`` with its (pretrained) weights.
        out_channels: its output channels (from the backbone's ``feature_info``).
    """

    def __init__(self, res5: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.res5 = res5
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))


def c4_parts(backbone: str, weights: str | None, freeze_stages: int, norm: str, anchor_sizes: Sequence[int],
             roi_pool_size: int = 14) -> HeadParts:
    """Trunk up to C4 (stride 16) for the RPN and RoIAlign; stage 5 moves into the box head.

    ``freeze_stages`` 1…3 freezes the stem and ``layer1…N`` of the trunk; 4 also freezes stage 5
    in the head. Works for basic-block (18/34) and bottleneck (50…152) ResNets: channels come from
    ``feature_info``.

    Example:
        >>> parts = c4_parts("resnet18", None, 0, "bn", (32, 64, 128, 256, 512))
        >>> parts.backbone.out_channels, parts.box_dim
        (256, 512)
    """
    trunk = create_backbone(backbone, weights=weights, out_features=("c4", "c5"),
                            freeze_stages=freeze_stages, norm=norm)
    info = by_name(trunk.feature_info)
    res5 = trunk.split_last_stage()  # keeps its loaded weights and its requires_grad flags
    anchors = AnchorGenerator((tuple(int(s) for s in anchor_sizes),), (ASPECT_RATIOS,))
    box_head = Res5BoxHead(res5, info["c5"].channels)
    return HeadParts(
        backbone=trunk,
        anchor_generator=anchors,
        rpn_head=FP32RPNHead(info["c4"].channels, anchors.num_anchors_per_location()[0]),
        roi_pool=MultiScaleRoIAlign(["c4"], output_size=roi_pool_size, sampling_ratio=0),
        box_head=box_head,
        box_dim=box_head.out_channels,
        preprocessing=trunk.preprocessing,
        pretrained=[trunk, res5],
    )
