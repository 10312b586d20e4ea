"""FPN neck on torchvision's ``FeaturePyramidNetwork``: ``{"c2"…"c5"}`` in, ``{"p2"…"p5"[, "p6"[, "p7"]]}`` out."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from .errors import UserError
from .features import FeatureInfo, FeatureInfoList, traceable

EXTRAS = (None, "maxpool", "p6", "p6p7")
EXTRA_SOURCES = ("p5", "c5")
NORMS = (None, "bn")


class ConvLevels(ExtraFPNBlock):
    """P6 (and P7) by 3×3 stride-2 convolutions, as RetinaNet and FCOS; torchvision's
    ``LastLevelP6P7`` with the source said, not guessed from channel counts, and P7 optional.

    Args:
        in_channels: channels of the source (C5's, or the FPN width for P5).
        out_channels: FPN width.
        p7: add P7 = conv(relu(P6)).
        from_p5: compute P6 from P5 (FCOS, torchvision RetinaNet v1) rather than C5 (RetinaNet paper, v2).
    """

    def __init__(self, in_channels: int, out_channels: int, p7: bool, from_p5: bool) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7: Optional[nn.Conv2d] = nn.Conv2d(out_channels, out_channels, 3, 2, 1) if p7 else None
        for m in (self.p6, self.p7):
            if m is not None:  # torchvision's initialisation
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)
        self.from_p5 = from_p5

    def forward(self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]
                ) -> tuple[list[torch.Tensor], list[str]]:
        p6 = self.p6(p[-1] if self.from_p5 else c[-1])
        p.append(p6)
        names.append("p6")
        if self.p7 is not None:
            p.append(self.p7(F.relu(p6)))
            names.append("p7")
        return p, names


class FPN(nn.Module):
    """Feature pyramid over any backbone that publishes ``feature_info``.

    Args:
        in_features: the backbone's ``feature_info`` (channels are read, not assumed).
        out_channels: common channel count of every pyramid level.
        extra: levels above the last one, each of stride 2 × the one below: ``None``; ``"maxpool"``
            (P6 subsampled from P5, as the Faster R-CNN FPN's RPN expects); ``"p6"`` / ``"p6p7"``
            (convolutions, :class:`ConvLevels`: RetinaNet, FCOS).
        extra_from: ``"p5"`` or ``"c5"``, the input of the ``p6`` convolution.
        norm: ``None`` (convolutions with biases, the FPN paper's) or ``"bn"`` (BatchNorm after each
            convolution, as torchvision's ``*_v2`` detectors).

    Example:
        >>> from resnet_backbones import create_backbone
        >>> bb = create_backbone("resnet18", weights=None)
        >>> fpn = FPN(bb.feature_info, out_channels=128)
        >>> [(f.name, f.channels, f.stride) for f in fpn.feature_info]
        [('p2', 128, 4), ('p3', 128, 8), ('p4', 128, 16), ('p5', 128, 32)]
    """

    __jit_unused_properties__ = ["feature_info"]

    def __init__(self, in_features: tuple[FeatureInfo, ...], out_channels: int = 256, extra: str | None = None,
                 extra_from: str = "p5", norm: str | None = None) -> None:
        super().__init__()
        if not in_features or any(not f.name.startswith("c") or f.name == "c1" for f in in_features):
            raise UserError(f"FPN takes features among c2…c5, got {[f.name for f in in_features]}")
        if out_channels < 1:
            raise UserError(f"FPN out_channels must be positive, got {out_channels}")
        if extra not in EXTRAS:
            raise UserError(f"FPN extra levels must be one of {EXTRAS}, got {extra!r}")
        if norm not in NORMS:
            raise UserError(f"FPN norm must be one of {NORMS}, got {norm!r}")
        if extra_from not in EXTRA_SOURCES:
            raise UserError(f"FPN extra levels come from one of {EXTRA_SOURCES}, got {extra_from!r}")
        self.in_features = tuple(in_features)
        self.out_channels = out_channels
        self.extra = extra
        if extra in ("p6", "p6p7"):
            source = out_channels if extra_from == "p5" else in_features[-1].channels
            blocks = ConvLevels(source, out_channels, p7=extra == "p6p7", from_p5=extra_from == "p5")
        else:
            blocks = LastLevelMaxPool() if extra == "maxpool" else None
        self.fpn = FeaturePyramidNetwork([f.channels for f in in_features], out_channels, extra_blocks=blocks,
                                         norm_layer=nn.BatchNorm2d if norm == "bn" else None)
        info = [FeatureInfo("p" + f.name[1:], out_channels, f.stride, f"fpn.layer_blocks.{i}", f.index)
                for i, f in enumerate(in_features)]
        top = in_features[-1]
        for k in range({None: 0, "maxpool": 1, "p6": 1, "p6p7": 2}[extra]):
            info.append(FeatureInfo(f"p{int(top.name[1:]) + k + 1}", out_channels, top.stride * 2 ** (k + 1),
                                    "fpn.extra_blocks" + ("" if extra == "maxpool" else f".p{k + 6}"),
                                    top.index + k + 1))
        self._info = FeatureInfoList(info)
        self._in_names = [f.name for f in in_features]
        self._out_names = [f.name for f in info]

    @property
    def feature_info(self) -> FeatureInfoList:
        return self._info

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return traceable(self.pyramid(feats))

    def pyramid(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The levels as a dict, also while traced (what a parent module calls)."""
        x: dict[str, torch.Tensor] = OrderedDict()
        for name in self._in_names:
            x[name] = feats[name]
        out: dict[str, torch.Tensor] = OrderedDict()
        for name, level in zip(self._out_names, self.fpn(x).values()):
            out[name] = level
        return out


class BackboneWithFPN(nn.Module):
    """A backbone followed by an FPN; accepted by ``torchvision.models.detection.FasterRCNN`` as is."""

    __jit_unused_properties__ = ["feature_info", "preprocessing"]

    def __init__(self, body: nn.Module, fpn: FPN) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    @property
    def feature_info(self) -> FeatureInfoList:
        return self.fpn.feature_info.with_prefix("fpn")

    @property
    def preprocessing(self):
        return self.body.preprocessing

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return traceable(self.fpn.pyramid(self.body(x)))
