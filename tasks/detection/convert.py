"""Instance-mask PNGs → COCO JSON with boxes and RLE masks (``resnet-tasks convert masks-to-coco``).

A mask PNG holds 0 for background and 1…K for K objects (one value per object). Categories:

- flat ``MASKS_DIR/*.png``: every object is of one category (``--category NAME``, default "object");
- ``MASKS_DIR/<category>/*.png``: one subfolder per category; an image may have a mask in several.
  ``--category`` then picks and orders the subfolders.

The image of ``stem.png`` is the file ``stem.*`` in ``--images`` (its size must match the mask);
without ``--images`` the COCO ``file_name`` is the mask's own name. Masks named after their image
with a suffix (PennFudan's ``FudanPed00001_mask.png`` for ``FudanPed00001.png``) need
``--mask-suffix _mask``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from tasks.data.io import DataError, IMAGE_EXTS, list_images, read_mask

DEFAULT_CATEGORY = "object"


def mask_annotation(mask: np.ndarray) -> dict[str, Any]:
    """One binary HxW mask → COCO ``segmentation`` (RLE), ``area`` and tight ``bbox`` [x, y, w, h]."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    return {"segmentation": rle, "area": float(mask_utils.area(rle)), "bbox": bbox, "iscrowd": 0}


def _category_folders(masks_dir: Path, names: list[str] | None) -> list[tuple[str, Path]]:
    subdirs = sorted(p for p in masks_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        if names and len(names) > 1:
            raise DataError(f"{masks_dir} holds masks directly, so all objects share one category, but "
                            f"{len(names)} --category names were given; put each category's masks in "
                            f"{masks_dir}/<category>/")
        return [(names[0] if names else DEFAULT_CATEGORY, masks_dir)]
    found = {p.name: p for p in subdirs}
    if names is None:
        return list(found.items())
    absent = [n for n in names if n not in found]
    if absent:
        raise DataError(f"no mask folder {masks_dir / absent[0]} for --category {absent[0]}; "
                        f"folders found: {', '.join(found)}")
    return [(n, found[n]) for n in names]


def _image_stem(mask_path: Path, suffix: str) -> str:
    if not suffix:
        return mask_path.stem
    if not mask_path.stem.endswith(suffix):
        raise DataError(f"mask {mask_path} does not end in --mask-suffix {suffix!r}; name masks <image stem>"
                        f"{suffix}.png or change --mask-suffix")
    return mask_path.stem[: -len(suffix)]


def _image_for(stem: str, images_dir: Path | None, mask_path: Path) -> tuple[str, Path | None]:
    if images_dir is None:
        return mask_path.name, None
    hits = [images_dir / (stem + ext) for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS)
            if (images_dir / (stem + ext)).is_file()]
    if not hits:
        raise DataError(f"no image {stem}.* in {images_dir} for mask {mask_path}; masks and images must share "
                        "the file stem (masks named <stem><suffix>.png: pass --mask-suffix, e.g. _mask)")
    return hits[0].name, hits[0]


def masks_to_coco(masks_dir: Path, out: Path, images_dir: Path | None = None,
                  category_names: list[str] | None = None, mask_suffix: str = "") -> dict[str, Any]:
    """Write a COCO JSON for the instance masks in ``masks_dir`` and return counts.

    ``mask_suffix``: the part of a mask's stem after its image's stem (``"_mask"``: ``a_mask.png``
    is the mask of image ``a.*``).

    Example (two objects, 1 and 2, in one mask):
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> mask = np.zeros((8, 8), np.uint8); mask[1:3, 1:4] = 1; mask[5:7, 4:8] = 2
        >>> (root / "masks").mkdir(); Image.fromarray(mask).save(root / "masks" / "a.png")
        >>> summary = masks_to_coco(root / "masks", root / "annotations" / "train.json")
        >>> summary["images"], summary["annotations"], summary["categories"]
        (1, 2, {'object': 2})
    """
    masks_dir, out = Path(masks_dir), Path(out)
    images_dir = Path(images_dir) if images_dir is not None else None
    if not masks_dir.is_dir():
        raise DataError(f"mask folder {masks_dir} not found")
    if images_dir is not None and not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} not found")
    folders = _category_folders(masks_dir, list(category_names) if category_names else None)
    categories = [{"id": i + 1, "name": n} for i, (n, _) in enumerate(folders)]

    images: dict[str, dict[str, Any]] = {}
    annotations: list[dict[str, Any]] = []
    for cat, (_, folder) in zip(categories, folders):
        masks = [p for p in list_images(folder) if p.suffix.lower() == ".png"]
        for mask_path in masks:
            mask = read_mask(mask_path)
            stem = _image_stem(mask_path, mask_suffix)
            file_name, image_path = _image_for(stem, images_dir, mask_path)
            if image_path is not None:
                from PIL import Image

                with Image.open(image_path) as im:
                    if im.size != (mask.shape[1], mask.shape[0]):
                        raise DataError(f"mask {mask_path} is {mask.shape[1]}×{mask.shape[0]} but image "
                                        f"{image_path} is {im.size[0]}×{im.size[1]}")
            entry = images.setdefault(stem, {"id": len(images) + 1, "file_name": file_name,
                                                       "width": int(mask.shape[1]), "height": int(mask.shape[0])})
            for value in np.unique(mask):
                if value == 0:
                    continue
                ann = mask_annotation(mask == value)
                annotations.append({"id": len(annotations) + 1, "image_id": entry["id"],
                                    "category_id": cat["id"], **ann})
    if not images:
        raise DataError(f"no mask PNGs found in {masks_dir}")
    coco = {"images": sorted(images.values(), key=lambda im: im["id"]), "annotations": annotations,
            "categories": categories}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco))
    with_boxes = {a["image_id"] for a in annotations}
    return {"images": len(images), "annotations": len(annotations),
            "categories": {c["name"]: sum(a["category_id"] == c["id"] for a in annotations) for c in categories},
            "empty_images": len(images) - len(with_boxes), "out": str(out)}
