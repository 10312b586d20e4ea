"""ResNet trunk that returns multi-scale features as a dict, with stage freezing."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn
from torchvision.models.resnet import ResNet
from torchvision.ops import FrozenBatchNorm2d

from .errors import UserError
from .features import FeatureInfo
from .registry import STAGE_NAMES, STAGE_STRIDES, BackboneSpec
from .weights import Preprocessing

NORMS = {"bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d}


def validate_freeze_stages(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 4:
        raise UserError(f"freeze_stages must be an integer in 0…4 (0 = nothing, 1…3 = stem + "
                        f"layer1…layerN, 4 = whole backbone), got {n!r}")
    return n


class ResNetBackbone(nn.Module):
    """A torchvision-layout ResNet that returns ``{"c2": …, "c5": …}`` (highest resolution first).

    Stages deeper than the deepest requested feature are not built. Module names equal
    torchvision's (``conv1``, ``bn1``, ``layer1``…), so torchvision/timm checkpoints load as is.

    Args:
        spec: architecture from the registry.
        out_features: subset of ``c1``…``c5`` to return.
        freeze_stages: 0 freezes nothing; N in 1…4 freezes the stem and ``layer1``…``layerN``
            (parameters get ``requires_grad=False``; their BatchNorm stays in eval mode).
        norm: ``"bn"`` (BatchNorm2d) or ``"frozen_bn"`` (torchvision FrozenBatchNorm2d everywhere).

    Example:
        >>> from resnet_backbones import create_backbone
        >>> bb = create_backbone("resnet18", weights=None)
        >>> {k: tuple(v.shape) for k, v in bb(torch.zeros(1, 3, 64, 64)).items()}
        {'c2': (1, 64, 16, 16), 'c3': (1, 128, 8, 8), 'c4': (1, 256, 4, 4), 'c5': (1, 512, 2, 2)}
    """

    def __init__(self, spec: BackboneSpec, out_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
                 freeze_stages: int = 0, norm: str = "bn",
                 preprocessing: Preprocessing | None = None) -> None:
        super().__init__()
        out_features = tuple(out_features)
        bad = [f for f in out_features if f not in STAGE_NAMES]
        if not out_features or bad or len(set(out_features)) != len(out_features):
            raise UserError(f"out_features must be distinct names from {STAGE_NAMES}, got {out_features}")
        if norm not in NORMS:
            raise UserError(f"norm must be one of {tuple(NORMS)}, got {norm!r}")
        self.spec = spec
        self.norm = norm
        self.preprocessing = preprocessing or Preprocessing()
        # Build with torchvision's own constructor: same init (Kaiming) and same numerics.
        net = ResNet(spec.block, list(spec.layers), groups=spec.groups,
                     width_per_group=spec.width_per_group, norm_layer=NORMS[norm])
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self._out_features = tuple(sorted(out_features, key=STAGE_NAMES.index))
        self.num_stages = STAGE_NAMES.index(self._out_features[-1])  # layers 1…num_stages are built
        for i in range(1, self.num_stages + 1):
            self.add_module(f"layer{i}", getattr(net, f"layer{i}"))
        self.freeze_stages = 0
        self.freeze(freeze_stages)

    # ---- metadata -------------------------------------------------------------------------
    @property
    def out_features(self) -> tuple[str, ...]:
        return self._out_features

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        return tuple(FeatureInfo(n, self.spec.channels[STAGE_NAMES.index(n)], STAGE_STRIDES[STAGE_NAMES.index(n)])
                     for n in self._out_features)

    @property
    def out_channels(self) -> int:
        """Channels of the single output (what torchvision detection reads); absent with several."""
        if len(self._out_features) != 1:
            raise AttributeError("out_channels is defined for a single output feature or with fpn=True")
        return self.feature_info[0].channels

    # ---- forward ----------------------------------------------------------------------------
    def stages(self) -> Iterator[tuple[str, nn.Module]]:
        for i in range(1, self.num_stages + 1):
            yield STAGE_NAMES[i], getattr(self, f"layer{i}")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = self.relu(self.bn1(self.conv1(x)))
        if "c1" in self._out_features:
            out["c1"] = x
        x = self.maxpool(x)
        for name, layer in self.stages():
            x = layer(x)
            if name in self._out_features:
                out[name] = x
        return out

    # ---- freezing -------------------------------------------------------------------------
    def stage_modules(self) -> list[tuple[str, list[nn.Module]]]:
        """``[("stem", [conv1, bn1]), ("layer1", [...]), …]`` for the stages that are built."""
        return [("stem", [self.conv1, self.bn1])] + [
            (f"layer{i}", [getattr(self, f"layer{i}")]) for i in range(1, self.num_stages + 1)]

    def frozen_modules(self) -> list[nn.Module]:
        if self.freeze_stages == 0:
            return []
        return [m for _, mods in self.stage_modules()[: self.freeze_stages + 1] for m in mods]

    def freeze(self, freeze_stages: int) -> "ResNetBackbone":
        """(Re)apply the freezing convention; lowering N unfreezes stages (for freeze schedules)."""
        self.freeze_stages = validate_freeze_stages(freeze_stages)
        frozen = {id(p) for m in self.frozen_modules() for p in m.parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) not in frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "ResNetBackbone":
        super().train(mode)
        # Frozen stages keep BatchNorm in eval mode so fine-tuning never shifts their running stats.
        for m in self.frozen_modules():
            m.eval()
        return self

    def split_last_stage(self) -> nn.Module:
        """Remove the deepest built stage and return it (e.g. ``layer4`` as a C4 detector's box head).

        The backbone then outputs the previous stage's feature only.
        """
        if self.num_stages < 2:
            raise UserError("split_last_stage needs at least two built stages")
        last = getattr(self, f"layer{self.num_stages}")
        delattr(self, f"layer{self.num_stages}")
        self.num_stages -= 1
        self._out_features = (STAGE_NAMES[self.num_stages],)
        return last
