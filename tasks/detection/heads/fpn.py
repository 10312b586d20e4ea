"""FPN design: backbone + FPN (P2…P5, max-pooled P6 for the RPN), one anchor size per level."""
from __future__ import annotations

from typing import Sequence

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from resnet_backbones import UserError, create_backbone

from . import ASPECT_RATIOS, FP32RPNHead, HeadParts


def fpn_parts(backbone: str, weights: str | None, freeze_stages: int, norm: str, anchor_sizes: Sequence[int],
              roi_pool_size: int = 7, fpn_channels: int = 256, box_head_dim: int = 1024,
              version: str = "v1") -> HeadParts:
    """RPN on every level (P2…P6), RoIAlign on P2…P5 with the level picked by box size, 2-FC box head.

    ``version="v2"``: torchvision's ``fasterrcnn_resnet50_fpn_v2`` design (BatchNorm in the FPN, two
    convolutions in the RPN head, four 3×3 convolutions with BatchNorm and one FC as box head).

    Example:
        >>> parts = fpn_parts("resnet18", None, 0, "bn", (32, 64, 128, 256, 512))
        >>> [f.name for f in parts.backbone.feature_info], parts.box_dim
        (['p2', 'p3', 'p4', 'p5', 'p6'], 1024)
    """
    net = create_backbone(backbone, weights=weights, freeze_stages=freeze_stages, norm=norm,
                          fpn=True, fpn_channels=fpn_channels, fpn_extra="maxpool",
                          fpn_norm="bn" if version == "v2" else None)
    levels = [f.name for f in net.feature_info]
    if len(anchor_sizes) != len(levels):
        raise UserError(f"--anchor-sizes needs one size per FPN level ({', '.join(levels)}): "
                        f"{len(levels)} values, got {list(anchor_sizes)}")
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (ASPECT_RATIOS,) * len(levels))
    ch = net.out_channels
    if version == "v2":
        box_head = FastRCNNConvFCHead((ch, roi_pool_size, roi_pool_size), [ch] * 4, [box_head_dim],
                                      norm_layer=nn.BatchNorm2d)
    else:
        box_head = TwoMLPHead(ch * roi_pool_size ** 2, box_head_dim)
    return HeadParts(
        backbone=net,
        anchor_generator=anchors,
        rpn_head=FP32RPNHead(ch, anchors.num_anchors_per_location()[0], conv_depth=2 if version == "v2" else 1),
        # P6 only serves the RPN (as in the FPN paper): RoIs are pooled from P2…P5.
        roi_pool=MultiScaleRoIAlign([n for n in levels if n != "p6"], output_size=roi_pool_size, sampling_ratio=2),
        box_head=box_head,
        box_dim=box_head_dim,
        preprocessing=net.preprocessing,
        pretrained=[net.body],
    )
