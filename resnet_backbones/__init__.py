"""ImageNet ResNets (18…152) as multi-scale feature extractors.

>>> import torch
>>> from resnet_backbones import create_backbone
>>> bb = create_backbone("resnet50", weights=None, freeze_stages=2)  # weights="imagenet": pretrained
>>> {name: tuple(f.shape) for name, f in bb(torch.rand(1, 3, 64, 64)).items()}
{'c2': (1, 256, 16, 16), 'c3': (1, 512, 8, 8), 'c4': (1, 1024, 4, 4), 'c5': (1, 2048, 2, 2)}
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
