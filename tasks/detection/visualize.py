"""Boxes with labels and scores drawn on an image (PNG outputs of predict and of each epoch)."""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import InterpolationMode, resize
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]
# Drawings are enlarged (by a whole factor) to at least this short side: on the demo's 128-px images,
# or any small crop, labels in a 10-px font over 2-px boxes cannot be read.
MIN_SIDE = 512


@functools.lru_cache(maxsize=1)
def label_font() -> str | None:
    """A TrueType font for labels that scale with the image (matplotlib ships DejaVu Sans); ``None``
    falls back to PIL's small bitmap font."""
    from matplotlib import font_manager

    try:
        return font_manager.findfont("DejaVu Sans", fallback_to_default=False)
    except ValueError:
        return None


def draw_boxes(image: np.ndarray, boxes, labels: list[str], scores=None, class_index=None,
               gt_boxes=None, masks=None) -> Image.Image:
    """HxWx3 uint8 image → PIL image with each box and ``label score``; ground truth (if given) in white.

    Drawn by ``torchvision.utils.draw_bounding_boxes`` on the image enlarged ``ceil(MIN_SIDE / short
    side)`` times (boxes scaled alike); colours follow the class (``class_index``). ``masks`` (N, H, W)
    bool, one per box, are filled half-transparent (``draw_segmentation_masks``).
    """
    img = torch.tensor(image).permute(2, 0, 1)  # a copy: read_rgb arrays are read-only
    scale = max(1, math.ceil(MIN_SIDE / min(img.shape[1:])))
    if scale > 1:
        img = resize(img, [img.shape[1] * scale, img.shape[2] * scale], InterpolationMode.BILINEAR, antialias=True)
    side = min(img.shape[1:])
    width, font_size = max(2, side // 200), max(12, side // 32)

    def scaled(b):
        return torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) * scale

    if masks is not None and len(masks):
        colours = [PALETTE[(class_index[i] if class_index is not None else i) % len(PALETTE)]
                   for i in range(len(masks))]
        m = torch.as_tensor(masks, dtype=torch.bool)
        if scale > 1:
            m = resize(m.to(torch.uint8), list(img.shape[1:]), InterpolationMode.NEAREST).bool()
        img = draw_segmentation_masks(img, m, alpha=0.45, colors=colours)
    if gt_boxes is not None and len(gt_boxes):
        img = draw_bounding_boxes(img, scaled(gt_boxes), colors="white", width=max(1, width // 2))
    if len(boxes):
        texts = list(labels) if scores is None else [f"{n} {float(s):.2f}" for n, s in zip(labels, scores)]
        colours = [PALETTE[(class_index[i] if class_index is not None else i) % len(PALETTE)]
                   for i in range(len(boxes))]
        font = label_font()
        img = draw_bounding_boxes(img, scaled(boxes), texts, colors=colours, width=width, font=font,
                                  font_size=font_size if font else None, label_colors="white",
                                  label_background_colors=colours, fill_labels=True)
    return Image.fromarray(img.permute(1, 2, 0).numpy())
