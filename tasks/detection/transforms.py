"""Box-aware training augmentation (albumentations); resizing and normalising happen in the model."""
from __future__ import annotations

import albumentations as A


def train_transform() -> A.Compose:
    """Horizontal flip, zoom in/out on a fixed canvas, colour jitter; boxes follow, are clipped,
    and are dropped when less than 30% stays visible."""
    return A.Compose(
        [A.HorizontalFlip(p=0.5),
         A.Affine(scale=(0.75, 1.25), keep_ratio=True, p=0.5),
         A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.03, p=0.8)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3,
                                 clip=True, filter_invalid_bboxes=True))
