"""Boxes with labels and scores drawn on an image (PNG outputs of predict and of each epoch)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]


def draw_boxes(image: np.ndarray, boxes, labels: list[str], scores=None, class_index=None,
               gt_boxes=None) -> Image.Image:
    """HxWx3 uint8 image → PIL image with each box and ``label score``; ground truth (if given) in white."""
    pil = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    for box in ([] if gt_boxes is None else gt_boxes):
        draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=1)
    for i, (box, name) in enumerate(zip(boxes, labels)):
        colour = PALETTE[(class_index[i] if class_index is not None else i) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        tx, ty = x1, max(0.0, y1 - 11)
        l, t, r, b = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle([l - 1, t - 1, r + 1, b + 1], fill=colour)
        draw.text((tx, ty), text, fill=(255, 255, 255), font=font)
    return pil
