"""ResNet trunk that returns multi-scale features as a dict, with stage freezing."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn
from torchvision.models.resnet import ResNet
from torchvision.ops import FrozenBatchNorm2d

from .blocks import DROP_PATH_BLOCKS, STEMS, cifar_stem, dilate_stage, set_drop_path
from .errors import UserError
from .features import FeatureInfo, FeatureInfoList, traceable
from .registry import STAGE_NAMES, BackboneSpec
from .weights import Preprocessing

NORMS = {"bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d}


def validate_freeze_stages(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 4:
        raise UserError(f"freeze_stages must be an integer in 0…4 (0 = nothing, 1…3 = stem + "
                        f"layer1…layerN, 4 = whole backbone), got {n!r}")
    return n


def stage_strides(stem: str, output_stride: int | None = None) -> tuple[int, ...]:
    """Strides of ``c1``…``c5`` for a stem, capped at ``output_stride`` (the dilated stages keep it).

    Example:
        >>> stage_strides("imagenet"), stage_strides("imagenet", 8), stage_strides("cifar")
        ((2, 4, 8, 16, 32), (2, 4, 8, 8, 8), (1, 1, 2, 4, 8))
    """
    base = (2, 4, 8, 16, 32) if stem == "imagenet" else (1, 1, 2, 4, 8)
    return tuple(min(s, output_stride or base[-1]) for s in base)


def validate_output_stride(stem: str, output_stride: int) -> int:
    full = stage_strides(stem)[-1]
    allowed = (full // 4, full // 2, full)
    if isinstance(output_stride, bool) or output_stride not in allowed:
        raise UserError(f"output_stride must be one of {allowed} with stem={stem!r} (smaller values dilate "
                        f"layer4, then layer3), got {output_stride!r}")
    return output_stride


class ResNetBackbone(nn.Module):
    """A torchvision-layout ResNet that returns ``{"c2": …, "c5": …}`` (highest resolution first).

    Stages deeper than the deepest requested feature are not built. Module names equal
    torchvision's (``conv1``, ``bn1``, ``layer1``…), so torchvision/timm checkpoints load as is.
    ``feature_info`` also answers timm's ``features_only`` accessors (``channels()``,
    ``reduction()``, ``module_name()``, ``get_dicts()``); traced with ``torch.jit.trace`` the
    features come as a tuple in that order (the tracer's strict mode refuses dicts).

    Args:
        spec: architecture from the registry.
        out_features: subset of ``c1``…``c5`` to return.
        freeze_stages: 0 freezes nothing; N in 1…4 freezes the stem and ``layer1``…``layerN``
            (parameters get ``requires_grad=False``; their BatchNorm stays in eval mode).
        norm: ``"bn"`` (BatchNorm2d) or ``"frozen_bn"`` (torchvision FrozenBatchNorm2d everywhere).
        in_chans: input channels (1 for grayscale).
        output_stride: largest stride; smaller than the stem's natural one (32 ImageNet, 8 CIFAR)
            dilates ``layer4`` (÷2) and ``layer3`` (÷4) instead of striding, as DeepLab does.
        drop_path_rate: stochastic depth of the last block (timm's linear rule from 0 at the first).
        stem: ``"imagenet"`` (7×7/2 conv + max-pool: strides 2/4/8/16/32) or ``"cifar"`` (3×3/1
            conv, no max-pool: strides 1/1/2/4/8, for 28–64 px images).

    Example:
        >>> from resnet_backbones import create_backbone
        >>> bb = create_backbone("resnet18", weights=None)
        >>> {k: tuple(v.shape) for k, v in bb(torch.zeros(1, 3, 64, 64)).items()}
        {'c2': (1, 64, 16, 16), 'c3': (1, 128, 8, 8), 'c4': (1, 256, 4, 4), 'c5': (1, 512, 2, 2)}
    """

    def __init__(self, spec: BackboneSpec, out_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
                 freeze_stages: int = 0, norm: str = "bn", preprocessing: Preprocessing | None = None, *,
                 in_chans: int = 3, output_stride: int | None = None, drop_path_rate: float = 0.0,
                 stem: str = "imagenet") -> None:
        super().__init__()
        out_features = tuple(out_features)
        bad = [f for f in out_features if f not in STAGE_NAMES]
        if not out_features or bad or len(set(out_features)) != len(out_features):
            raise UserError(f"out_features must be distinct names from {STAGE_NAMES}, got {out_features}")
        if norm not in NORMS:
            raise UserError(f"norm must be one of {tuple(NORMS)}, got {norm!r}")
        if stem not in STEMS:
            raise UserError(f"stem must be one of {STEMS}, got {stem!r}")
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise UserError(f"in_chans must be a positive integer (1 = grayscale, 3 = RGB), got {in_chans!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise UserError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        output_stride = validate_output_stride(stem, output_stride or stage_strides(stem)[-1])
        self.spec = spec
        self.norm, self.stem, self.in_chans, self.output_stride = norm, stem, in_chans, output_stride
        self.drop_path_rate = drop_path_rate
        self.strides = stage_strides(stem, output_stride)
        self.preprocessing = preprocessing or Preprocessing()
        # Build with torchvision's own constructor: same init (Kaiming) and same numerics.
        net = ResNet(DROP_PATH_BLOCKS[spec.block], list(spec.layers), groups=spec.groups,
                     width_per_group=spec.width_per_group, norm_layer=NORMS[norm])
        if in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        if stem == "cifar":
            net.conv1, net.maxpool = cifar_stem(net.conv1), nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self._out_features = tuple(sorted(out_features, key=STAGE_NAMES.index))
        self._returned = list(self._out_features)  # a list: TorchScript has `in` for lists
        self.num_stages = STAGE_NAMES.index(self._out_features[-1])  # layers 1…num_stages are built
        stages = [getattr(net, f"layer{i}") for i in range(1, 5)]
        set_drop_path(stages, drop_path_rate, sum(spec.layers))
        dilation = 1
        for i in range(2, self.num_stages + 1):  # layer2…: each halves the resolution unless dilated
            if self.strides[i] == self.strides[i - 1]:
                dilate_stage(stages[i - 1], dilation * 2, dilation)
                dilation *= 2
        for i in range(1, self.num_stages + 1):
            self.add_module(f"layer{i}", stages[i - 1])
        self.freeze_stages = 0
        self.freeze(freeze_stages)

    # ---- metadata -------------------------------------------------------------------------
    # Python-side metadata: TorchScript would otherwise try to compile these properties.
    __jit_unused_properties__ = ["out_features", "feature_info", "out_channels"]

    @property
    def out_features(self) -> tuple[str, ...]:
        return self._out_features

    @property
    def feature_info(self) -> FeatureInfoList:
        def info(name: str) -> FeatureInfo:
            i = STAGE_NAMES.index(name)
            return FeatureInfo(name, self.spec.channels[i], self.strides[i], "relu" if i == 0 else f"layer{i}", i)

        return FeatureInfoList(info(n) for n in self._out_features)

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
        out: dict[str, torch.Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))
        if "c1" in self._returned:
            out["c1"] = x
        x = self.maxpool(x)
        # Written out per stage, as TorchScript can compile it: hasattr() is resolved when compiling.
        if hasattr(self, "layer1"):
            x = self._keep(out, "c2", self.layer1(x))
        if hasattr(self, "layer2"):
            x = self._keep(out, "c3", self.layer2(x))
        if hasattr(self, "layer3"):
            x = self._keep(out, "c4", self.layer3(x))
        if hasattr(self, "layer4"):
            x = self._keep(out, "c5", self.layer4(x))
        return traceable(out)

    def _keep(self, out: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
        if name in self._returned:
            out[name] = x
        return x

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
        self._returned = list(self._out_features)
        return last
