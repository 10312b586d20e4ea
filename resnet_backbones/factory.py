"""``create_backbone``: registry name + weights + freezing → ready feature extractor."""
from __future__ import annotations

import os
from typing import Sequence

from torch import nn

from .backbone import ResNetBackbone, validate_freeze_stages
from .errors import UserError
from .features import FeatureListNet
from .fpn import FPN, BackboneWithFPN
from .registry import STAGE_NAMES, get_spec
from .weights import fit_stem, load_trunk_weights, resolve_weights

DEFAULT_OUT_FEATURES = ("c2", "c3", "c4", "c5")
OUT_FORMATS = ("dict", "list")


def features_of_indices(out_indices: Sequence[int]) -> tuple[str, ...]:
    """timm's ``out_indices`` (0 = stem output ``c1`` … 4 = ``c5``, negatives from the end) → names."""
    n = len(STAGE_NAMES)
    bad = [i for i in out_indices if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n]
    if not out_indices or bad:
        raise UserError(f"out_indices must be integers in {-n}…{n - 1} (0 = c1, stride 2 … 4 = c5), "
                        f"got {tuple(out_indices)}")
    return tuple(STAGE_NAMES[i] for i in out_indices)


def create_backbone(name: str, weights: str | os.PathLike | None = "imagenet",
                    out_features: Sequence[str] | None = None, freeze_stages: int = 0,
                    norm: str = "bn", fpn: bool = False, fpn_channels: int = 256,
                    fpn_extra: str | None = None, fpn_extra_from: str = "p5", *,
                    out_indices: Sequence[int] | None = None, in_chans: int = 3,
                    output_stride: int | None = None, drop_path_rate: float = 0.0,
                    stem: str = "imagenet", out_format: str = "dict", fpn_norm: str | None = None) -> nn.Module:
    """Build a registered ResNet as a multi-scale feature extractor.

    Args:
        name: one of :func:`list_backbones`.
        weights: ``"imagenet"``, ``"torchvision:TAG"``, ``"timm:NAME.TAG"``, a local file, or None.
        out_features: features to return, among ``c1``…``c5`` (default ``c2``…``c5``).
        freeze_stages: 0…4, see :class:`ResNetBackbone`.
        norm: ``"bn"`` or ``"frozen_bn"``.
        fpn: put an FPN on the outputs; the module then returns ``p2``…``p5`` (+ extra levels).
        fpn_channels: FPN width.
        fpn_extra: levels above the last: ``None``; ``"maxpool"`` (P6 subsampled from P5, the
            Faster R-CNN RPN's); ``"p6"`` or ``"p6p7"`` (3×3/2 convolutions, RetinaNet/FCOS).
        fpn_extra_from: ``"p5"`` (FCOS, torchvision RetinaNet v1) or ``"c5"`` (RetinaNet paper, v2):
            the input of the first extra convolution.
        out_indices: timm's alternative to ``out_features``: 0 = ``c1`` … 4 = ``c5``.
        in_chans: input channels; pretrained RGB ``conv1`` filters are adapted as timm does.
        output_stride: 8/16/32 (CIFAR stem: 2/4/8); smaller dilates the last stages.
        drop_path_rate: stochastic depth (timm's rule).
        stem: ``"imagenet"`` or ``"cifar"`` (3×3 stride-1 conv, no max-pool; see ResNetBackbone).
        out_format: ``"dict"`` (keyed by level) or ``"list"`` (timm ``features_only``'s output).
        fpn_norm: ``None`` or ``"bn"`` (BatchNorm in the FPN, as torchvision's ``*_v2`` detectors).

    Example:
        >>> bb = create_backbone("resnet50", weights=None, fpn=True)
        >>> [(f.name, f.channels, f.stride) for f in bb.feature_info]
        [('p2', 256, 4), ('p3', 256, 8), ('p4', 256, 16), ('p5', 256, 32)]
        >>> bb = create_backbone("resnet18", weights=None, out_indices=(1, 2, 3, 4), output_stride=8)
        >>> bb.feature_info.channels(), bb.feature_info.reduction()
        ([64, 128, 256, 512], [4, 8, 8, 8])
    """
    spec = get_spec(name)
    validate_freeze_stages(freeze_stages)
    if out_indices is not None:
        if out_features is not None:
            raise UserError("pass out_features (names) or out_indices (timm's indices), not both")
        out_features = features_of_indices(out_indices)
    if out_format not in OUT_FORMATS:
        raise UserError(f"out_format must be one of {OUT_FORMATS}, got {out_format!r}")
    # Build (and so validate every argument and the FPN inputs) before resolving weights: a typo
    # must be reported as such, not as a failed download, and must not cost a download first.
    body = ResNetBackbone(spec, DEFAULT_OUT_FEATURES if out_features is None else out_features, freeze_stages=0,
                          norm=norm, in_chans=in_chans, output_stride=output_stride,
                          drop_path_rate=drop_path_rate, stem=stem)
    neck = (FPN(body.feature_info, fpn_channels, extra=fpn_extra, extra_from=fpn_extra_from, norm=fpn_norm)
            if fpn else None)
    state_dict, body.preprocessing = resolve_weights(spec, weights)
    if state_dict is not None:
        load_trunk_weights(body, fit_stem(state_dict, body.conv1, str(weights)), spec.name, str(weights))
    body.freeze(freeze_stages)
    model = BackboneWithFPN(body, neck) if neck is not None else body
    return FeatureListNet(model) if out_format == "list" else model
