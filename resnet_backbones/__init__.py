"""ImageNet ResNets (18…152) as multi-scale feature extractors.

>>> from resnet_backbones import create_backbone, list_backbones
>>> bb = create_backbone("resnet50", weights="imagenet", freeze_stages=2)
>>> feats = bb(images)          # {"c2": …, "c3": …, "c4": …, "c5": …}
"""
from .backbone import ResNetBackbone
from .errors import UserError, WeightsError
from .factory import create_backbone
from .features import FeatureInfo
from .fpn import FPN, BackboneWithFPN
from .registry import BackboneSpec, get_spec, list_backbones, register_backbone
from .summary import describe, framework_equivalents, freeze_table
from .weights import Preprocessing, read_state_dict

__all__ = [
    "BackboneSpec", "BackboneWithFPN", "FPN", "FeatureInfo", "Preprocessing", "ResNetBackbone",
    "UserError", "WeightsError", "create_backbone", "describe", "framework_equivalents",
    "freeze_table", "get_spec", "list_backbones", "read_state_dict", "register_backbone",
]
