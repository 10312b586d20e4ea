"""Embedded demo set: coloured shapes on textured backgrounds, written as COCO like real data.

``write_demo(root, seed)`` draws deterministic images from the seed into ``root/images`` and the
boxes (tight around each drawn object, with RLE masks) into ``root/annotations/{train,val}.json``;
training then reads it through the same COCO loader as any ``--data`` folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tasks.classification.demo import draw_shape
from tasks.data.seeding import sample_seed

from .convert import mask_annotation

CLASSES = ("circle", "square", "triangle")
IMAGE_H, IMAGE_WIDTHS = 128, (128, 160)
OBJECT_SIZE = (16, 48)
VERSION = 1


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    a, b = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    img = a * (1 - t) + b * t + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.broadcast_to(img, (h, w, 3)), 0, 255).astype(np.uint8)


def _iou(a, b) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _image(rng: np.random.Generator, image_id: int, ann_start: int):
    h, w = IMAGE_H, int(rng.choice(IMAGE_WIDTHS))
    pil = Image.fromarray(_background(rng, h, w))
    draw = ImageDraw.Draw(pil)
    n = 0 if rng.random() < 0.1 else int(rng.integers(1, 5))  # about 10% negatives
    anns, placed = [], []
    for _ in range(n * 20):
        if len(placed) == n:
            break
        s = int(rng.integers(*OBJECT_SIZE))
        x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        box = (x, y, x + s, y + s)
        if any(_iou(box, p) > 0 for p in placed):
            continue
        placed.append(box)
        cls = int(rng.integers(len(CLASSES)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        mask = Image.new("L", (w, h))
        for canvas, colour in ((draw, fill), (ImageDraw.Draw(mask), 1)):
            draw_shape(canvas, CLASSES[cls], x + s / 2, y + s / 2, s / 2, colour)
        anns.append({"id": ann_start + len(anns), "image_id": image_id, "category_id": cls + 1,
                     **mask_annotation(np.asarray(mask))})
    return pil, {"id": image_id, "file_name": f"{image_id:05d}.png", "width": w, "height": h}, anns


def write_demo(root: Path, seed: int, n_train: int = 160, n_val: int = 48) -> Path:
    """Write the demo set under ``root`` (reused if already written alike); return ``root``.

    Example:
        >>> import tempfile
        >>> root = write_demo(Path(tempfile.mkdtemp()) / "demo", seed=0, n_train=4, n_val=2)
        >>> sorted(p.name for p in (root / "annotations").iterdir())
        ['train.json', 'val.json']
    """
    root = Path(root)
    stamp = {"version": VERSION, "seed": seed, "sizes": {"train": n_train, "val": n_val}}
    marker = root / "demo.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    image_id, ann_id = 1, 1
    for split, count in stamp["sizes"].items():
        rng = np.random.default_rng(sample_seed(seed, "detection-demo", split))
        images, anns = [], []
        for _ in range(count):
            pil, entry, new = _image(rng, image_id, ann_id)
            pil.save(root / "images" / entry["file_name"])
            images.append(entry)
            anns += new
            image_id, ann_id = image_id + 1, ann_id + len(new)
        (root / "annotations" / f"{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories}))
    marker.write_text(json.dumps(stamp))
    return root
