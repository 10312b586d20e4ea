"""FPN neck on torchvision's ``FeaturePyramidNetwork``: ``{"c2"…"c5"}`` in, ``{"p2"…"p5"[, "p6"]}`` out."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .errors import UserError
from .features import FeatureInfo


class FPN(nn.Module):
    """Feature pyramid over any backbone that publishes ``feature_info``.

    Args:
        in_features: the backbone's ``feature_info`` (channels are read, not assumed).
        out_channels: common channel count of every pyramid level.
        p6: add a max-pooled P6 (stride 2 × the last level), as the FPN RPN expects.

    Example:
        >>> from resnet_backbones import create_backbone
        >>> bb = create_backbone("resnet18", weights=None)
        >>> fpn = FPN(bb.feature_info, out_channels=128)
        >>> [(f.name, f.channels, f.stride) for f in fpn.feature_info]
        [('p2', 128, 4), ('p3', 128, 8), ('p4', 128, 16), ('p5', 128, 32)]
    """

    def __init__(self, in_features: tuple[FeatureInfo, ...], out_channels: int = 256, p6: bool = False) -> None:
        super().__init__()
        if not in_features or any(not f.name.startswith("c") or f.name == "c1" for f in in_features):
            raise UserError(f"FPN takes features among c2…c5, got {[f.name for f in in_features]}")
        if out_channels < 1:
            raise UserError(f"FPN out_channels must be positive, got {out_channels}")
        self.in_features = tuple(in_features)
        self.out_channels = out_channels
        self.fpn = FeaturePyramidNetwork([f.channels for f in in_features], out_channels,
                                         extra_blocks=LastLevelMaxPool() if p6 else None)
        info = [FeatureInfo("p" + f.name[1:], out_channels, f.stride) for f in in_features]
        if p6:
            info.append(FeatureInfo("p6", out_channels, in_features[-1].stride * 2))
        self.feature_info = tuple(info)

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.fpn(OrderedDict((f.name, feats[f.name]) for f in self.in_features))
        return OrderedDict(zip((f.name for f in self.feature_info), out.values()))


class BackboneWithFPN(nn.Module):
    """A backbone followed by an FPN; accepted by ``torchvision.models.detection.FasterRCNN`` as is."""

    def __init__(self, body: nn.Module, fpn: FPN) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        return self.fpn.feature_info

    @property
    def preprocessing(self):
        return self.body.preprocessing

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.body(x))
