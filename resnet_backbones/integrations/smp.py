"""Our backbones as segmentation_models_pytorch encoders.

Importing this module registers ``"rt-<name>"`` (e.g. ``"rt-resnet50"``) in smp's encoder table,
so ``smp.Unet("rt-resnet50", encoder_weights="imagenet")``, ``smp.FPN`` and ``smp.DeepLabV3Plus``
build on our backbone. ``encoder_weights`` goes through smp's own mechanism: each ``rt-<name>``
offers the weights smp offers for its own ``<name>`` encoder (Hugging Face ``smp-hub``, torchvision's
key layout, which :meth:`SmpEncoder.load_state_dict` maps onto ours). Other weights load with
:meth:`SmpEncoder.load_weights` (our loader: torchvision, timm or local files, offline-safe);
freezing with :meth:`SmpEncoder.freeze`.
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch
from torch import nn

from ..backbone import ResNetBackbone
from ..features import FeatureInfoList
from ..registry import STAGE_NAMES, get_spec, list_backbones
from ..weights import fit_stem, load_trunk_weights, resolve_weights, strip_prefix

PREFIX = "rt-"


class SmpEncoder(nn.Module):
    """smp encoder protocol (list of features, input first) over a :class:`ResNetBackbone`."""

    _is_torch_scriptable = True
    __jit_unused_properties__ = ["out_channels", "output_stride", "feature_info", "preprocessing"]
    _is_torch_exportable = True
    _is_torch_compilable = True

    def __init__(self, name: str, depth: int = 5, output_stride: int = 32, freeze_stages: int = 0,
                 norm: str = "bn") -> None:
        super().__init__()
        if not 1 <= depth <= 5:
            raise ValueError(f"encoder depth must be in 1…5, got {depth}")
        self._depth = depth
        self._in_channels = 3
        self._output_stride = output_stride
        spec = get_spec(name)
        self.backbone = ResNetBackbone(spec, STAGE_NAMES[:depth], freeze_stages=freeze_stages, norm=norm)
        self._out_channels = [3] + [f.channels for f in self.backbone.feature_info]

    @property
    def out_channels(self) -> list[int]:
        return self._out_channels

    @property
    def output_stride(self) -> int:
        return min(self._output_stride, 2 ** self._depth)

    @property
    def feature_info(self):
        # After make_dilated() the deepest stages keep the output stride; report what they produce.
        return FeatureInfoList(replace(f, stride=min(f.stride, self.output_stride)) for f in self.backbone.feature_info)

    @property
    def preprocessing(self):
        return self.backbone.preprocessing

    def load_weights(self, weights: str | os.PathLike | None) -> "SmpEncoder":
        """Load ``"imagenet"``/``"torchvision:…"``/``"timm:…"``/a file into the encoder."""
        sd, pre = resolve_weights(self.backbone.spec, weights)
        if sd is not None:
            # smp patched conv1 for in_channels != 3 at construction, before any weights existed,
            # so a 3-channel file never fit; adapt the file's conv1 as smp and timm do when loading.
            sd = fit_stem(sd, self.backbone.conv1, str(weights))
            load_trunk_weights(self.backbone, sd, self.backbone.spec.name, str(weights))
        self.backbone.preprocessing = pre
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Our own keys (``backbone.…``) load as usual; a torchvision-layout trunk (what smp's
        ``encoder_weights`` downloads) goes through our loader, which reports anything that does not fit."""
        if any(k.startswith("backbone.") for k in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        sd = fit_stem(strip_prefix(dict(state_dict)), self.backbone.conv1, "smp encoder weights")
        load_trunk_weights(self.backbone, sd, self.backbone.spec.name, "smp encoder weights")
        return nn.modules.module._IncompatibleKeys([], [])

    def freeze(self, freeze_stages: int) -> "SmpEncoder":
        self.backbone.freeze(freeze_stages)
        return self

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        if in_channels == 3:
            return
        from segmentation_models_pytorch.encoders._utils import patch_first_conv

        self._in_channels = in_channels
        self._out_channels[0] = in_channels
        patch_first_conv(model=self.backbone, new_in_channels=in_channels, pretrained=pretrained)

    def get_stages(self) -> dict[int, list[nn.Module]]:
        # Only stages that are built: with depth < 5 layer4 (and < 4 layer3) does not exist, and
        # smp still calls make_dilated (e.g. DeepLabV3Plus(encoder_depth=4)).
        built = dict(self.backbone.stages())
        return {stride: [built[name]] for stride, name in ((16, "c4"), (32, "c5")) if name in built}

    def make_dilated(self, output_stride: int) -> None:
        from segmentation_models_pytorch.encoders._utils import replace_strides_with_dilation

        if output_stride not in (8, 16):
            raise ValueError(f"output stride must be 8 or 16, got {output_stride}")
        for stage_stride, modules in self.get_stages().items():
            if stage_stride > output_stride:
                for m in modules:
                    replace_strides_with_dilation(m, stage_stride // output_stride)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x]
        for f in self.backbone(x).values():  # a loop, not [x, *…]: TorchScript has no starred lists
            out.append(f)
        return out


def register_smp_encoders() -> list[str]:
    """Add ``rt-<name>`` for every registry backbone to smp's encoder table (idempotent), with the
    ``encoder_weights`` smp has for its own encoder of that name."""
    from segmentation_models_pytorch.encoders import encoders

    names = []
    for name in list_backbones():
        key = PREFIX + name
        settings = dict(encoders.get(name, {}).get("pretrained_settings", {}))
        encoders[key] = {"encoder": SmpEncoder, "pretrained_settings": settings, "params": {"name": name}}
        names.append(key)
    return names


register_smp_encoders()
