"""``create_backbone``: registry name + weights + freezing → ready feature extractor."""
from __future__ import annotations

import os
from typing import Sequence

from torch import nn

from .backbone import ResNetBackbone, validate_freeze_stages
from .fpn import FPN, BackboneWithFPN
from .registry import get_spec
from .weights import load_trunk_weights, resolve_weights


def create_backbone(name: str, weights: str | os.PathLike | None = "imagenet",
                    out_features: Sequence[str] = ("c2", "c3", "c4", "c5"), freeze_stages: int = 0,
                    norm: str = "bn", fpn: bool = False, fpn_channels: int = 256,
                    fpn_p6: bool = False) -> nn.Module:
    """Build a registered ResNet as a multi-scale feature extractor.

    Args:
        name: one of :func:`list_backbones`.
        weights: ``"imagenet"``, ``"torchvision:TAG"``, ``"timm:NAME.TAG"``, a local file, or None.
        out_features: features to return, among ``c1``…``c5``.
        freeze_stages: 0…4, see :class:`ResNetBackbone`.
        norm: ``"bn"`` or ``"frozen_bn"``.
        fpn: put an FPN on the outputs; the module then returns ``p2``…``p5`` (+ ``p6``).
        fpn_channels / fpn_p6: FPN width and extra P6 level.

    Example:
        >>> bb = create_backbone("resnet50", weights=None, fpn=True)
        >>> [(f.name, f.channels, f.stride) for f in bb.feature_info]
        [('p2', 256, 4), ('p3', 256, 8), ('p4', 256, 16), ('p5', 256, 32)]
    """
    spec = get_spec(name)
    validate_freeze_stages(freeze_stages)
    # Build (and so validate out_features / norm / the FPN inputs) before resolving weights: a typo
    # must be reported as such, not as a failed download, and must not cost a download first.
    body = ResNetBackbone(spec, out_features, freeze_stages=0, norm=norm)
    neck = FPN(body.feature_info, fpn_channels, p6=fpn_p6) if fpn else None
    state_dict, body.preprocessing = resolve_weights(spec, weights)
    if state_dict is not None:
        load_trunk_weights(body, state_dict, spec.name, str(weights))
    body.freeze(freeze_stages)
    return BackboneWithFPN(body, neck) if neck is not None else body
