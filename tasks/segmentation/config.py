"""Settings of ``--task segmentation``; every field is also a CLI flag (``--num-classes``…).

Kept free of torch imports: the CLI builds its flags from this module.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

from .. import register_task
from ..config import TaskConfig, option

HEADS = ("unet", "fpn", "deeplabv3plus")
# Without --data: the generated demo set (64 px images) trains in about two CPU minutes, even from a
# randomly initialised backbone (offline): ~100 steps at a higher LR; tiny images need no workers.
DEMO_DEFAULTS = {"img_size": 64, "epochs": 10, "batch_size": 16, "lr": 3e-3, "workers": 0}
LOSSES = ("ce", "ce+dice", "dice")


@register_task("segmentation", task="tasks.segmentation.task:SegmentationTask", demo_defaults=DEMO_DEFAULTS)
@dataclass
class SegmentationConfig(TaskConfig):
    """Semantic segmentation: a U-Net (or FPN / DeepLabV3+) decoder on a registry backbone."""

    img_size: int = option(256, "Training crop side (images are padded, never resized, to fit; crops never "
                                "exceed the smallest training image). Evaluation and prediction use full images.")
    head: str = option("unet", "unet (default), fpn or deeplabv3plus: smp's decoder on the backbone's "
                               "multi-scale features.", HEADS)
    num_classes: typing.Optional[int] = option(None, "Number of classes (default: largest mask value + 1).", ge=2)
    ignore_index: typing.Optional[int] = option(
        None, "Mask value left out of loss and metrics (default 255; binary 0/255 masks map to classes 0/1).")
    class_names: typing.Optional[list[str]] = option(
        None, "Comma-separated class names (default: DATA/classes.txt, one per line, else class0, class1…).")
    shots: typing.Optional[int] = option(None, "Few-shot: train on K training images (seeded; the list is saved "
                                               "to fewshot_subset.json and reused on --resume).", ge=1)
    val_fraction: float = option(0.2, "Share of the images held out (seeded) when DATA has no val split.",
                                gt=0, lt=1)
    loss: str = option("ce", "Loss: cross-entropy, cross-entropy + Dice, or Dice.", LOSSES)
    class_weights: typing.Optional[str] = option(
        None, "Cross-entropy class weights: 'auto' (inverse square root of training pixel frequency) "
              "or comma-separated numbers, one per class.")
    decoder_channels: typing.Optional[list[int]] = option(
        None, "U-Net decoder widths, deepest first (default 256,128,64,32,16); FPN/DeepLabV3+: first value.",
        ge=1)
    full_res_skip: bool = option(False, "U-Net: add a full-resolution skip from the image (sharper edges, "
                                        "8-12 % more step time; on by default with random initial weights, "
                                        "where it was measured to pay; off: exactly smp.Unet).")
    aug_scale: float = option(0.25, "Training rescale factor drawn from [1 - s, 1 + s] before cropping (0 = off).",
                               ge=0, lt=1)
    aug_color: float = option(0.2, "Colour jitter strength on training images (0 = off); masks are untouched.",
                               ge=0)
    vflip: bool = option(False, "Also flip vertically during training (aerial, microscopy).")
    tile: int = option(0, "Sliding-window inference: tile side in pixels for large images (0 = whole image).",
                    ge=0)
    tile_overlap: float = option(0.25, "Overlap between sliding-window tiles, as a fraction of the tile.",
                                 ge=0, lt=1)
