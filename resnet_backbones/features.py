"""Feature metadata published by backbones and necks (read by FPNs and heads)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureInfo:
    """One output feature map: its dict key, channel count and stride w.r.t. the input."""

    name: str
    channels: int
    stride: int


def by_name(infos: tuple[FeatureInfo, ...]) -> dict[str, FeatureInfo]:
    return {f.name: f for f in infos}
