"""Embedded demo data: coloured shapes on noisy textured backgrounds, generated from the seed.

Each class is a shape drawn in its own band of hues. Offline the backbone starts from random
weights, and colour is what such a network picks up within the demo's one-minute budget; with
ImageNet weights the shapes alone are learnt as quickly.
"""
from __future__ import annotations

from pathlib import Path

import colorsys

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross")


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, colour, width: int = 0) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif kind == "cross":
        t = max(2, int(r / 2.5))
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=colour)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=colour)
    else:
        raise ValueError(kind)


def class_colour(rng: np.random.Generator, index: int, n: int) -> tuple[int, int, int]:
    """A saturated colour from the class's own hue band (random within the band)."""
    hue = (index + rng.uniform(0.15, 0.85)) / n
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def textured_background(rng: np.random.Generator, size: int) -> Image.Image:
    base = np.full(3, rng.integers(60, 160))  # grey level: colour belongs to the shapes
    noise = rng.normal(0, 20, size=(size // 4, size // 4, 3))
    tex = np.kron(noise, np.ones((4, 4, 1)))[:size, :size]
    return Image.fromarray(np.clip(base + tex, 0, 255).astype(np.uint8))


def make_classification_demo(root: Path, seed: int = 0, size: int = 64, n_train: int = 40, n_val: int = 16) -> Path:
    """Write ``root/{train,val}/<shape>/*.png`` (idempotent for a given seed)."""
    root = Path(root)
    if (root / ".complete").exists():
        return root
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for kind in CLASSES:
            d = root / split / kind
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                im = textured_background(rng, size)
                r = rng.uniform(0.22, 0.34) * size
                cx, cy = rng.uniform(max(r, 0.3 * size), min(size - r, 0.7 * size), size=2)
                colour = class_colour(rng, CLASSES.index(kind), len(CLASSES))
                draw_shape(ImageDraw.Draw(im), kind, cx, cy, r, colour)
                im.save(d / f"{i:03d}.png")
    (root / ".complete").touch()
    return root
