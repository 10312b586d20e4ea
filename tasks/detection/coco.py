"""COCO-format detection data: reading and checking the JSON, few-shot subsets, the Dataset.

Layout of ``--data DATA`` (paths can also be given one by one: ``--train-annotations``,
``--val-annotations``, ``--images``)::

    DATA/annotations/train.json   COCO "images", "annotations" (bbox [x, y, w, h]), "categories"
    DATA/annotations/val.json     optional; without it --val-fraction of the train images is held out
    DATA/images/<file_name>       where images are looked up first, then DATA/<split>/, then DATA/

Categories become contiguous labels 1…K (0 is the background) in the order of their ids, and map
back to their ids for COCO output. Images without annotations are kept as negatives.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tasks.data.io import DataError, read_rgb
from tasks.data.seeding import sample_seed, stratified_pick

log = logging.getLogger(__name__)


@dataclass
class CocoSplit:
    """One annotation file after checking: boxes are ``[x1, y1, x2, y2]`` inside their image."""

    source: str
    categories: list[dict[str, Any]]               # [{"id", "name"}], sorted by id
    images: list[dict[str, Any]]                   # {"id", "file_name", "width", "height", "path"}
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # image id → anns

    @property
    def num_boxes(self) -> int:
        return sum(len(a) for a in self.annotations.values())

    def subset(self, image_ids: set[int], ann_ids: set[int] | None = None, source: str | None = None) -> "CocoSplit":
        """The given images, keeping only ``ann_ids`` among their annotations if given."""
        return replace(self, source=source or self.source,
                       images=[im for im in self.images if im["id"] in image_ids],
                       annotations={i: [a for a in anns if ann_ids is None or a["id"] in ann_ids]
                                    for i, anns in self.annotations.items() if i in image_ids})


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"annotation file {path} not found; expected COCO JSON (see --train-annotations)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise DataError(f"annotation file {path} is not COCO: it needs lists 'images' and 'categories' "
                        "(and 'annotations')")
    return data


def _check_categories(cats: list, path: Path) -> list[dict[str, Any]]:
    out = []
    for c in cats:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DataError(f"{path}: every category needs 'id' and 'name', got {c!r}")
        out.append({"id": int(c["id"]), "name": str(c["name"])})
    for key in ("id", "name"):
        seen = [c[key] for c in out]
        dup = sorted({v for v in seen if seen.count(v) > 1}, key=str)
        if dup:
            raise DataError(f"{path}: category {key}s must be unique, repeated: {dup}")
    if not out:
        raise DataError(f"{path} has no categories; detection needs at least one")
    return sorted(out, key=lambda c: c["id"])


def _find_image(file_name: str, dirs: list[Path]) -> Path | None:
    return next((d / file_name for d in dirs if (d / file_name).is_file()), None)


def load_coco(path: Path, image_dirs: list[Path]) -> CocoSplit:
    """Read and check a COCO JSON; images are looked up in ``image_dirs`` in order.

    Boxes reaching outside their image are clipped, boxes of zero or negative size (after
    clipping) are dropped; both are counted and printed. A missing image file, an annotation
    of an unknown image or category, or a malformed box is a :class:`DataError` naming it.
    """
    path = Path(path)
    data = _load_json(path)
    categories = _check_categories(data["categories"], path)
    cat_ids = {c["id"] for c in categories}

    images, missing = [], []
    for im in data["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise DataError(f"{path}: every image needs 'id' and 'file_name', got {im!r}")
        file = _find_image(str(im["file_name"]), image_dirs)
        if file is None:
            missing.append(str(im["file_name"]))
            continue
        w, h = im.get("width"), im.get("height")
        if not w or not h:
            with Image.open(file) as pil:
                w, h = pil.size
        images.append({"id": int(im["id"]), "file_name": str(im["file_name"]), "width": int(w),
                       "height": int(h), "path": file})
    if missing:
        raise DataError(f"{path}: image file {missing[0]!r} not found in {', '.join(map(str, image_dirs))}"
                        + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else "")
                        + "; put the images there or pass --images DIR")
    by_id = {im["id"]: im for im in images}
    if len(by_id) != len(images):
        raise DataError(f"{path}: image ids must be unique")

    raw = data.get("annotations") or []
    if not all(isinstance(a, dict) for a in raw):
        raise DataError(f"{path}: 'annotations' must be a list of objects")
    ids = [a.get("id") for a in raw]
    if None in ids or len(set(ids)) != len(ids):  # pycocotools needs unique ids
        log.info(f"{path.name}: annotation ids missing or repeated; numbering them 1…{len(raw)}")
        ids = list(range(1, len(raw) + 1))
    annotations: dict[int, list[dict]] = {i: [] for i in by_id}
    clipped = dropped = 0
    for ann_id, a in zip(ids, raw):
        if a.get("image_id") not in by_id:
            raise DataError(f"{path}: annotation {ann_id} refers to image_id {a.get('image_id')!r}, "
                            "which is not in 'images'")
        if a.get("category_id") not in cat_ids:
            raise DataError(f"{path}: annotation {ann_id} has category_id {a.get('category_id')!r}, which is not "
                            f"in 'categories' (ids {sorted(cat_ids)}); fix the annotation or add the category")
        box = a.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise DataError(f"{path}: annotation {ann_id} needs bbox [x, y, width, height] of 4 numbers, got {box!r}")
        im = by_id[a["image_id"]]
        x1, y1, x2, y2 = box[0], box[1], box[0] + box[2], box[1] + box[3]
        cx1, cy1 = min(max(x1, 0), im["width"]), min(max(y1, 0), im["height"])
        cx2, cy2 = min(max(x2, 0), im["width"]), min(max(y2, 0), im["height"])
        if cx2 <= cx1 or cy2 <= cy1:
            dropped += 1
            continue
        clipped += (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
        entry = {"id": int(ann_id), "category_id": int(a["category_id"]), "bbox": [cx1, cy1, cx2, cy2],
                 "iscrowd": int(a.get("iscrowd", 0)), "area": float(a.get("area") or (cx2 - cx1) * (cy2 - cy1))}
        if a.get("segmentation"):  # polygons or RLE, decoded only where masks are used (Mask R-CNN)
            entry["segmentation"] = a["segmentation"]
        annotations[im["id"]].append(entry)
    if clipped or dropped:
        log.info(f"{path.name}: clipped {clipped} box(es) to their image, dropped {dropped} of zero or negative size")
    return CocoSplit(str(path), categories, images, annotations)


def resolve_layout(data: Path, split: str, annotations: str | None = None,
                   images: str | None = None) -> tuple[Path, list[Path]]:
    """(annotation file, image folders to search) for ``split`` under ``data`` or the explicit paths."""
    ann = Path(annotations) if annotations else data / "annotations" / f"{split}.json"
    dirs = [Path(images)] if images else [data / "images", data / split, data]
    return ann, dirs


def holdout(split: CocoSplit, fraction: float, seed: int) -> tuple[CocoSplit, CocoSplit]:
    """Seeded split of the images into (train, val)."""
    ids = sorted(im["id"] for im in split.images)
    g = torch.Generator().manual_seed(sample_seed(seed, "detection-holdout"))
    n_val = max(1, round(fraction * len(ids))) if len(ids) > 1 else 0
    val = {ids[i] for i in torch.randperm(len(ids), generator=g)[:n_val].tolist()}
    return (split.subset(set(ids) - val, source=f"{split.source} (train part)"),
            split.subset(val, source=f"{split.source} (held-out {fraction:.0%})"))


def sample_shots(split: CocoSplit, shots: int, seed: int) -> tuple[CocoSplit, dict[str, Any]]:
    """K annotated instances per category (seeded, TFA-style); their images keep only those boxes.

    Returns the subset and a JSON-able record of the choice (image and annotation ids).
    """
    anns = [a for im_id in sorted(split.annotations) for a in split.annotations[im_id] if not a["iscrowd"]]
    image_of = {a["id"]: im_id for im_id, lst in split.annotations.items() for a in lst}
    picked, _ = stratified_pick([a["category_id"] for a in anns], shots, seed, tag="detection-shots")
    chosen = [anns[i] for i in picked]
    names = {c["id"]: c["name"] for c in split.categories}
    per_class = {names[c["id"]]: sorted(a["id"] for a in chosen if a["category_id"] == c["id"])
                 for c in split.categories}
    short = {n: len(v) for n, v in per_class.items() if len(v) < shots}
    if short:
        log.info(f"--shots {shots}: fewer instances available for {short}; using all of them")
    image_ids = {image_of[a["id"]] for a in chosen}
    record = {"shots": shots, "seed": seed, "source": split.source, "image_ids": sorted(image_ids),
              "annotation_ids": per_class}
    return split.subset(image_ids, {a["id"] for a in chosen}, source=f"{split.source} ({shots}-shot)"), record


def _downscale(image: np.ndarray, boxes: np.ndarray, masks: list[np.ndarray], min_size: int, max_size: int):
    """Shrink like the model's transform would (never enlarge): less work for the augmentations."""
    h, w = image.shape[:2]
    scale = min(min_size / min(h, w), max_size / max(h, w))
    if scale >= 1:
        return image, boxes, masks
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    masks = [np.asarray(Image.fromarray(m).resize(size, Image.NEAREST)) for m in masks]
    return image, boxes * np.array([size[0] / w, size[1] / h] * 2, dtype=np.float32), masks


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO ``segmentation`` (polygons, RLE or uncompressed RLE) → HxW uint8 0/1 mask (pycocotools)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(np.uint8)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 → 3xHxW float in 0…1 (the detector normalises with the weights' mean/std)."""
    return torch.tensor(image).permute(2, 0, 1).float().div_(255)  # copies: read_rgb's arrays are read-only


class CocoDetection(Dataset):
    """Samples ``(image float CHW in 0…1, {"boxes" xyxy, "labels" 1…K, "image_id"})`` of a split.

    Args:
        split: a checked :class:`CocoSplit`.
        class_names: the model's classes (label ``i + 1`` is ``class_names[i]``); the split's
            categories are matched to them by name.
        transform: bbox-aware albumentations ``Compose`` (training) or None.
        seed: augmentation seed; each sample is augmented from ``(seed, epoch, index)``.
        train_size: ``(min_size, max_size)`` to shrink large images to before augmenting (training only).
        masks: also return ``"masks"`` ``(N, H, W)`` uint8 (Mask R-CNN); every annotation needs a
            ``segmentation``.
    """

    def __init__(self, split: CocoSplit, class_names: list[str], transform=None, seed: int = 0,
                 train_size: tuple[int, int] | None = None, masks: bool = False) -> None:
        names = {c["name"]: c["id"] for c in split.categories}
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise DataError(f"{split.source}: categories {unknown} are not among the model's classes "
                            f"{class_names}")
        self.split = split
        self.class_names = list(class_names)
        self.label_of = {names[n]: i + 1 for i, n in enumerate(class_names) if n in names}
        self.category_id_of = {label: cat for cat, label in self.label_of.items()}
        self.transform, self.seed, self.train_size = transform, seed, train_size
        self.masks = masks
        self.epoch = 0
        if masks:
            bare = [a["id"] for lst in split.annotations.values() for a in lst if "segmentation" not in a]
            if bare:
                raise DataError(f"{split.source}: {len(bare)} annotation(s) have no 'segmentation' "
                                f"(e.g. id {bare[0]}), "
                                "which Mask R-CNN needs; add masks (resnet-tasks convert masks-to-coco) or use "
                                "another --head")

    def __len__(self) -> int:
        return len(self.split.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int):
        im = self.split.images[index]
        image = read_rgb(im["path"])
        if image.shape[:2] != (im["height"], im["width"]):
            raise DataError(f"{im['path']} is {image.shape[1]}×{image.shape[0]} but {self.split.source} says "
                            f"{im['width']}×{im['height']}; fix width/height in the JSON")
        anns = [a for a in self.split.annotations.get(im["id"], []) if not a["iscrowd"]]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        labels = np.array([self.label_of[a["category_id"]] for a in anns], dtype=np.int64)
        masks = [decode_mask(a["segmentation"], im["height"], im["width"]) for a in anns] if self.masks else []
        if self.transform is not None:
            if self.train_size:
                image, boxes, masks = _downscale(image, boxes, masks, *self.train_size)
            self.transform.set_random_seed(sample_seed(self.seed, self.epoch, index))
            # The labels travel as indices, so that the masks of dropped boxes can be dropped too.
            out = self.transform(image=image, bboxes=boxes, labels=np.arange(len(labels)),
                                 **({"masks": masks} if masks else {}))
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            kept = np.asarray(out["labels"], dtype=np.int64)
            labels = labels[kept]
            masks = [np.asarray(out["masks"][i]) for i in kept] if masks else []
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "image_id": im["id"]}
        if self.masks:
            h, w = image.shape[:2]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.uint8)
        return to_tensor(image), target

    def coco_gt(self) -> dict[str, Any]:
        """The split as COCO JSON (checked boxes, crowd regions kept) for pycocotools."""
        images = [{k: im[k] for k in ("id", "file_name", "width", "height")} for im in self.split.images]
        anns = [{"id": a["id"], "image_id": im_id, "category_id": a["category_id"], "iscrowd": a["iscrowd"],
                 "area": a["area"], "bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][2] - a["bbox"][0],
                                             a["bbox"][3] - a["bbox"][1]],
                 **({"segmentation": a["segmentation"]} if "segmentation" in a else {})}
                for im_id, lst in self.split.annotations.items() for a in lst]
        return {"images": images, "annotations": anns, "categories": self.split.categories}


def collate(batch):
    """Detection batches are lists: images differ in size and targets in box count."""
    images, targets = zip(*batch)
    return list(images), list(targets)
