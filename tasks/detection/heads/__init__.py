"""Box-head designs for Faster R-CNN: each builds the parts that differ, ``model.py`` wires the rest.

- ``fpn.py``: RPN on P2…P6, RoIAlign 7×7 per level, two-FC box head (torchvision's fasterrcnn_*_fpn).
- ``c4.py``: RPN and RoIAlign 14×14 on C4, the backbone's own stage 5 as box head (detectron2 Res5ROIHeads).
- ``maskrcnn.py``: Mask R-CNN's mask branch on the FPN design.
- ``dense.py``: RetinaNet and FCOS (one-stage, P3–P7): anchors and backbone.
- ``predictor.py``: the last classifier/regressor (linear or cosine) and few-shot row transfer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from resnet_backbones.weights import Preprocessing


@dataclass
class HeadParts:
    """What a head design supplies to :class:`tasks.detection.model.Detector`."""

    backbone: nn.Module             # image → dict of features; has ``out_channels``
    anchor_generator: AnchorGenerator
    rpn_head: nn.Module
    roi_pool: MultiScaleRoIAlign
    box_head: nn.Module             # pooled RoIs → (N, box_dim)
    box_dim: int
    preprocessing: Preprocessing
    pretrained: list[nn.Module] = field(default_factory=list)  # modules holding the ImageNet weights


ASPECT_RATIOS = (0.5, 1.0, 2.0)


class FP32RPNHead(RPNHead):
    """torchvision's RPN head with float32 outputs under autocast.

    torchvision decodes boxes in the dtype of the predicted deltas: in bfloat16, coordinates near
    800 px would snap to steps of 4 px. The convolution keeps running in reduced precision.
    """

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]
# The C4 box head runs stage 5 on every RoI, so it samples and keeps fewer RoIs than the FPN MLP.
# RoIAlign sizes are torchvision's (FPN) and detectron2's (C4, halved to 7×7 by stage 5's stride).
HEAD_DEFAULTS: dict[str, dict[str, int]] = {
    "fpn": {"roi_batch_size": 128, "proposals": 300, "roi_pool_size": 7},
    "c4": {"roi_batch_size": 64, "proposals": 100, "roi_pool_size": 14},
    "maskrcnn": {"roi_batch_size": 128, "proposals": 300, "roi_pool_size": 7},
}


def build_head_parts(head: str, **kwargs) -> HeadParts:
    """Parts of design ``head`` ("fpn" or "c4"); ``kwargs`` go to ``fpn_parts`` / ``c4_parts``."""
    from .c4 import c4_parts
    from .fpn import fpn_parts

    return {"fpn": fpn_parts, "c4": c4_parts}[head](**kwargs)
