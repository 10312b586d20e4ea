"""The embedded demo set: coloured shapes on textured backgrounds, written as real data would be.

Classes: background, disc, square, triangle. Each shape class has its own hue band (with
jitter, and overlapping saturation/brightness), the background is a greyish texture of blobs,
stripes and grain: learnable in a couple of CPU minutes even from a randomly initialised
backbone, yet the edges and touching shapes still need spatial context. Written
deterministically from the seed in the standard layout (``train/images``, ``train/masks``,
``val/…``, ``classes.txt``), so training on it takes the same code path as user data.
"""
from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..data.seeding import sample_seed

CLASSES = ("background", "disc", "square", "triangle")
HUES = {1: 0.0, 2: 0.33, 3: 0.62}  # red-ish discs, green-ish squares, blue-ish triangles
VERSION = 2  # bump when the generator changes, so old demo folders are rewritten


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour blobs + stripes + grain."""
    base = rng.uniform(60, 200) + rng.normal(0, 12, 3)  # greyish: low saturation
    coarse = rng.normal(0, 25, (6, 6, 3))
    blobs = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
        (size, size), Image.BICUBIC), dtype=np.float32) - 128
    yy, xx = np.mgrid[:size, :size]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    stripes = 18 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)[..., None]
    grain = rng.normal(0, 8, (size, size, 3))
    return base + blobs + stripes * rng.uniform(0.3, 1.0) + grain


def _shape(draw_img: ImageDraw.ImageDraw, draw_mask: ImageDraw.ImageDraw, rng: np.random.Generator,
           size: int, cls: int) -> None:
    r = rng.uniform(0.09, 0.2) * size
    cx, cy = rng.uniform(r, size - r, 2)
    hue = (HUES[cls] + rng.uniform(-0.07, 0.07)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
    colour = tuple(int(255 * c) for c in rgb)
    if cls == 1:
        box = [cx - r, cy - r, cx + r, cy + r]
        draw_img.ellipse(box, fill=colour)
        draw_mask.ellipse(box, fill=cls)
        return
    if cls == 2:
        a = rng.uniform(0, np.pi / 2)
        angles = a + np.pi / 4 + np.arange(4) * np.pi / 2
        rr = r * 1.05
    else:
        a = rng.uniform(0, 2 * np.pi)
        angles = a + np.arange(3) * 2 * np.pi / 3
        rr = r * 1.25
    pts = [(cx + rr * np.cos(t), cy + rr * np.sin(t)) for t in angles]
    draw_img.polygon(pts, fill=colour)
    draw_mask.polygon(pts, fill=cls)


def make_sample(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One ``(HxWx3 uint8 image, HxW uint8 mask)``, a pure function of its arguments."""
    rng = np.random.default_rng(sample_seed(seed, "demo", split, index))
    img = Image.fromarray(np.clip(_background(rng, size), 0, 255).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    di, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(2, 5))):
        _shape(di, dm, rng, size, int(rng.integers(1, len(CLASSES))))
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8), np.asarray(mask)


def write_demo(root: Path, seed: int = 0, n_train: int = 160, n_val: int = 48, size: int = 64) -> Path:
    """Write the demo set under ``root`` (kept if an identical one is already there); returns ``root``."""
    root = Path(root)
    stamp = f"v{VERSION} seed={seed} n_train={n_train} n_val={n_val} size={size}\n"
    marker = root / ".demo"
    if marker.is_file() and marker.read_text() == stamp:
        return root
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = make_sample(seed, split, i, size)
            Image.fromarray(image).save(root / split / "images" / f"{i:04d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:04d}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    marker.write_text(stamp)
    return root
