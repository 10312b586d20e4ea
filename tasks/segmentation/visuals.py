"""Colour palettes, overlays and side-by-side panels (image | truth | prediction) as PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import draw_segmentation_masks


def palette(n: int = 256) -> np.ndarray:
    """``(n, 3)`` uint8 colours, the PASCAL VOC map (0 black, 1 dark red, 2 green…)."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


PALETTE = palette()


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, ignore_index: int | None = None
            ) -> np.ndarray:
    """Blend the class colours over an HxWx3 uint8 image (``torchvision.utils.draw_segmentation_masks``);
    ignored pixels keep the image."""
    classes = [c for c in np.unique(mask).tolist() if c != ignore_index]
    if not classes:
        return image.copy()
    masks = torch.tensor(mask)[None] == torch.tensor(classes)[:, None, None]
    colours = [tuple(int(v) for v in PALETTE[c % 256]) for c in classes]
    drawn = draw_segmentation_masks(torch.tensor(image).permute(2, 0, 1), masks,
                                    alpha=alpha, colors=colours)
    return drawn.permute(1, 2, 0).numpy()


def save_index_mask(mask: np.ndarray, path: Path) -> None:
    """A palette PNG: pixel values are the class indices, viewers show the palette colours.

    More than 256 classes do not fit a palette: those masks are 16-bit grayscale PNGs.
    """
    if mask.max(initial=0) > 255:
        Image.fromarray(mask.astype(np.uint16)).save(path)
        return
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(PALETTE.flatten().tolist())
    im.save(path)


def save_panels(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path,
                ignore_index: int | None = None, gap: int = 4, min_height: int = 128,
                class_names: Sequence[str] | None = None) -> None:
    """One PNG, a row per sample: image | truth overlay | prediction overlay, with column titles and,
    with ``class_names``, a legend of the colours of the classes shown.

    Small images are enlarged (nearest neighbour, whole factors) to at least ``min_height``.
    """
    scale = max(1, min_height // max(img.shape[0] for img, _, _ in rows))
    panels = []
    for img, truth, pred in rows:
        row = (img, overlay(img, truth, ignore_index=ignore_index), overlay(img, pred))
        panels.append([np.kron(p, np.ones((scale, scale, 1), np.uint8)) for p in row])
    title_h = 14
    col_w = max(p[0].shape[1] for p in panels)
    h = sum(p[0].shape[0] for p in panels) + gap * (len(panels) - 1) + title_h
    canvas = np.full((h, 3 * col_w + 2 * gap, 3), 255, dtype=np.uint8)
    y = title_h
    for row in panels:
        ih, iw = row[0].shape[:2]
        for k, p in enumerate(row):
            x = k * (col_w + gap)
            canvas[y:y + ih, x:x + iw] = p
        y += ih + gap
    if class_names:
        shown = sorted({c for _, truth, pred in rows for m in (truth, pred) for c in np.unique(m).tolist()
                        if c != ignore_index and c < len(class_names)})
        canvas = np.concatenate([canvas, legend(shown, class_names, canvas.shape[1])])
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    for k, title in enumerate(("image", "truth", "prediction")):
        draw.text((k * (col_w + gap) + 2, 1), title, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def legend(classes: Sequence[int], names: Sequence[str], width: int, row_h: int = 16) -> np.ndarray:
    """White strip ``width`` wide: a colour swatch and the name of each class, wrapped into rows."""
    entries = [(c, f"{c}: {names[c]}") for c in classes]
    widths = [row_h + 6 * len(text) + 12 for _, text in entries]  # PIL's default font: ~6 px a character
    rows, x = 1, 0
    for w in widths:
        if x and x + w > width:
            rows, x = rows + 1, 0
        x += w
    im = Image.new("RGB", (width, rows * row_h + 4), "white")
    draw = ImageDraw.Draw(im)
    x, y = 2, 2
    for (c, text), w in zip(entries, widths):
        if x > 2 and x + w > width:
            x, y = 2, y + row_h
        draw.rectangle((x, y + 2, x + row_h - 6, y + row_h - 4), fill=tuple(int(v) for v in PALETTE[c % 256]),
                       outline=(0, 0, 0))
        draw.text((x + row_h, y + 2), text, fill=(0, 0, 0))
        x += w
    return np.asarray(im)
