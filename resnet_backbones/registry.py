"""Registry of ResNet variants: each is data (block, depth per stage, width) plus its weights.

Variants keep torchvision's module layout (``conv1``, ``bn1``, ``layer1``…``layer4``) so that
torchvision and timm checkpoints load without key renaming.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Type

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .errors import UserError

STAGE_NAMES = ("c1", "c2", "c3", "c4", "c5")


@dataclass(frozen=True)
class BackboneSpec:
    """Architecture of one registered ResNet variant.

    Args:
        name: registry key, e.g. ``"resnet50"``.
        block: torchvision ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage (``layer1``…``layer4``).
        groups / width_per_group: ResNeXt / Wide-ResNet widths (torchvision's meaning).
        imagenet: the weights that ``weights="imagenet"`` resolves to (any ``torchvision:TAG`` or
            ``timm:NAME.TAG`` of the same architecture loads too).
    """

    name: str
    block: Type[nn.Module]
    layers: tuple[int, int, int, int]
    imagenet: str
    groups: int = 1
    width_per_group: int = 64

    @property
    def channels(self) -> tuple[int, ...]:
        e = self.block.expansion
        return (64, 64 * e, 128 * e, 256 * e, 512 * e)

    @property
    def block_type(self) -> str:
        return "basic" if self.block is BasicBlock else "bottleneck"


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, **spec_args) -> BackboneSpec:
    """Add a variant; registering a name twice is an error (a silent override hides bugs)."""
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} is already registered")
    spec = BackboneSpec(name=name, **spec_args)
    _REGISTRY[name] = spec
    return spec


def list_backbones() -> list[str]:
    """Names of all registered backbones, in registration order (resnet18 first)."""
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown backbone {name!r}; choose one of: {', '.join(_REGISTRY)}"
        ) from None


# Weights: "imagenet" is torchvision's best release for the depth (V2 where it exists,
# top-1 in README). timm tags load through the same key layout.
register_backbone("resnet18", block=BasicBlock, layers=(2, 2, 2, 2),
                  imagenet="torchvision:IMAGENET1K_V1")
register_backbone("resnet34", block=BasicBlock, layers=(3, 4, 6, 3),
                  imagenet="torchvision:IMAGENET1K_V1")
register_backbone("resnet50", block=Bottleneck, layers=(3, 4, 6, 3),
                  imagenet="torchvision:IMAGENET1K_V2")
register_backbone("resnet101", block=Bottleneck, layers=(3, 4, 23, 3),
                  imagenet="torchvision:IMAGENET1K_V2")
register_backbone("resnet152", block=Bottleneck, layers=(3, 8, 36, 3),
                  imagenet="torchvision:IMAGENET1K_V2")
register_backbone("resnext50_32x4d", block=Bottleneck, layers=(3, 4, 6, 3), groups=32, width_per_group=4,
                  imagenet="torchvision:IMAGENET1K_V2")
register_backbone("wide_resnet50_2", block=Bottleneck, layers=(3, 4, 6, 3), width_per_group=128,
                  imagenet="torchvision:IMAGENET1K_V2")
