"""Encoder → decoder → head: a registry backbone under a segmentation_models_pytorch decoder.

The backbone enters smp as the ``rt-<name>`` encoder (``resnet_backbones.integrations.smp``), so
skip widths come from its ``feature_info``. :class:`SegmentationModel` pads any input to a
multiple of 32 and crops the logits back, so every image size works.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resnet_backbones.errors import UserError

PAD_MULTIPLE = 32  # the encoder's total stride


class SegmentationModel(nn.Module):
    """Logits ``(B, num_classes, H, W)`` for images ``(B, 3, H, W)`` of any size.

    Scriptable and traceable; with ``torch.export`` the spatial sizes are dynamic in multiples of
    32 (``32 * Dim(...)``), as symbolic shapes cannot follow the padding to a multiple.

    Args:
        encoder: smp-protocol encoder (list of features, the input first).
        decoder: smp decoder taking that list.
        segmentation_head: decoder output → class logits at full resolution.
        image_skip: optional module on the (padded) image whose output joins the features as a
            full-resolution skip (U-Net only).

    Example:
        >>> m = build_segmentation_model("resnet18", num_classes=3, weights=None)
        >>> tuple(m(torch.zeros(1, 3, 45, 70)).shape)
        (1, 3, 45, 70)
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, segmentation_head: nn.Module,
                 image_skip: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder, self.decoder, self.segmentation_head = encoder, decoder, segmentation_head
        self.image_skip = image_skip
        self.pad_multiple = PAD_MULTIPLE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        m = self.pad_multiple  # an attribute: TorchScript does not read module-level ints
        # Pad and crop back with F.pad whatever the size (by 0 when already a multiple): no branch on
        # the size and no view, so an exported graph (ONNX, torch.export) holds for every size.
        x = F.pad(x, (0, -w % m, 0, -h % m))
        features = self.encoder(x)
        if self.image_skip is not None:
            features.insert(1, self.image_skip(x))
        logits = self.segmentation_head(self.decoder(features))
        return F.pad(logits, (0, w - logits.shape[-1], 0, h - logits.shape[-2]))


def build_segmentation_model(backbone: str, num_classes: int, head: str = "unet",
                             weights: str | None = None, freeze_stages: int = 0, norm: str = "bn",
                             decoder_channels: Sequence[int] | None = None,
                             full_res_skip: bool = False) -> SegmentationModel:
    """A U-Net / FPN / DeepLabV3+ on registry backbone ``backbone``.

    Args:
        backbone: registry name (``resnet18``…).
        num_classes: output channels.
        head: ``"unet"``, ``"fpn"`` or ``"deeplabv3plus"``.
        weights: backbone weights (see ``create_backbone``); None = random init, nothing downloaded.
        freeze_stages: 0…4, stem + layer1…N frozen (BatchNorm of frozen stages stays in eval mode).
        norm: ``"bn"`` or ``"frozen_bn"`` in the backbone.
        decoder_channels: U-Net widths, deepest first (5 values); FPN/DeepLabV3+ use the first.
        full_res_skip: U-Net only: a small conv branch on the image gives the last decoder block a
            full-resolution skip (smp's U-Net has none at stride 1); off, the model is ``smp.Unet``.
    """
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.base import initialization as init
    from segmentation_models_pytorch.base.modules import Conv2dReLU

    from resnet_backbones.backbone import validate_freeze_stages
    from resnet_backbones.integrations.smp import PREFIX, SmpEncoder

    validate_freeze_stages(freeze_stages)
    kwargs = {}
    if decoder_channels:
        decoder_channels = [int(c) for c in decoder_channels]
        if head == "unet":
            if len(decoder_channels) != 5:
                raise UserError(f"decoder_channels needs 5 values for the U-Net, got {decoder_channels}")
            kwargs["decoder_channels"] = decoder_channels
        elif head == "fpn":
            kwargs.update(decoder_pyramid_channels=decoder_channels[0], decoder_segmentation_channels=
                          max(16, decoder_channels[0] // 2))
        else:
            kwargs["decoder_channels"] = decoder_channels[0]
    net = smp.create_model(head, encoder_name=PREFIX + backbone, encoder_weights=None, classes=num_classes,
                           **kwargs)
    encoder = net.encoder
    if norm != "bn":  # smp passes no extra arguments to custom encoders: rebuild ours with the norm
        encoder = SmpEncoder(backbone, depth=5, output_stride=encoder.output_stride, norm=norm)
        if encoder.output_stride != 32:
            encoder.make_dilated(encoder.output_stride)
    if weights is not None:
        encoder.load_weights(weights)
    encoder.freeze(freeze_stages)

    decoder, image_skip = net.decoder, None
    if head == "unet" and full_res_skip:
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

        widths = list(decoder_channels or (256, 128, 64, 32, 16))
        skip = widths[-1]
        image_skip = nn.Sequential(Conv2dReLU(3, skip, 3, padding=1), Conv2dReLU(skip, skip, 3, padding=1))
        # The decoder drops its first feature (the input) and uses the next one at full resolution.
        decoder = UnetDecoder([encoder.out_channels[0], skip, *encoder.out_channels[1:]], widths, n_blocks=5)
        init.initialize_decoder(decoder)
        init.initialize_decoder(image_skip)
    return SegmentationModel(encoder, decoder, net.segmentation_head, image_skip)


@torch.no_grad()
def sliding_window(model: nn.Module, images: torch.Tensor, num_classes: int, tile: int, overlap: float
                   ) -> torch.Tensor:
    """Class probabilities ``(B, C, H, W)``, averaged over overlapping ``tile``-sized windows.

    ``tile <= 0`` or an image no larger than one tile runs in one pass.
    """
    h, w = images.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        return model(images).float().softmax(1)
    step = max(1, int(tile * (1 - overlap)))
    probs = images.new_zeros(images.shape[0], num_classes, h, w, dtype=torch.float32)
    count = images.new_zeros(1, 1, h, w, dtype=torch.float32)
    for y in _starts(h, tile, step):
        for x in _starts(w, tile, step):
            window = images[..., y:y + tile, x:x + tile]
            probs[..., y:y + tile, x:x + tile] += model(window).float().softmax(1)
            count[..., y:y + tile, x:x + tile] += 1
    return probs / count


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / step)
    return sorted({min(i * step, length - tile) for i in range(n + 1)})
