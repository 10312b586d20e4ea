"""Boxes with labels and scores drawn on an image (PNG outputs of predict and of each epoch)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]


def draw_boxes(image: np.ndarray, boxes, labels: list[str], scores=None, class_index=None,
               gt_boxes=None, masks=None) -> Image.Image:
    """HxWx3 uint8 image → PIL image with each box and ``label score``; ground truth (if given) in white.

    Drawn by ``torchvision.utils.draw_bounding_boxes``; colours follow the class (``class_index``).
    ``masks`` (N, H, W) bool, one per box, are filled half-transparent (``draw_segmentation_masks``).
    """
    img = torch.tensor(image).permute(2, 0, 1)  # a copy: read_rgb arrays are read-only
    if masks is not None and len(masks):
        colours = [PALETTE[(class_index[i] if class_index is not None else i) % len(PALETTE)]
                   for i in range(len(masks))]
        img = draw_segmentation_masks(img, torch.as_tensor(masks, dtype=torch.bool), alpha=0.45, colors=colours)
    if gt_boxes is not None and len(gt_boxes):
        img = draw_bounding_boxes(img, torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
                                  colors="white", width=1)
    if len(boxes):
        texts = list(labels) if scores is None else [f"{n} {float(s):.2f}" for n, s in zip(labels, scores)]
        colours = [PALETTE[(class_index[i] if class_index is not None else i) % len(PALETTE)]
                   for i in range(len(boxes))]
        img = draw_bounding_boxes(img, torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), texts,
                                  colors=colours, width=2)
    return Image.fromarray(img.permute(1, 2, 0).numpy())
