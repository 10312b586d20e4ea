"""ImageNet ResNets (18…152) as multi-scale feature extractors.

>>> from resnet_backbones import create_backbone, list_backbones
>>> bb = create_backbone("resnet50", weights="imagenet", freeze_stages=2)
>>> feats = bb(images)          # {"c2": …, "c3": …, "c4": …, "c5": …}
"""
from __future__ import annotations

import importlib

# Names are imported on first use (PEP 562), so that ``resnet_backbones.errors`` (and the CLI's
# ``--help``, which needs only it) do not pay for importing torch.
_EXPORTS = {
    "ResNetBackbone": "backbone", "UserError": "errors", "WeightsError": "errors", "create_backbone": "factory",
    "FeatureInfo": "features", "FPN": "fpn", "BackboneWithFPN": "fpn", "BackboneSpec": "registry",
    "get_spec": "registry", "list_backbones": "registry", "register_backbone": "registry", "describe": "summary",
    "framework_equivalents": "summary", "freeze_table": "summary", "Preprocessing": "weights",
    "read_state_dict": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'resnet_backbones' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
