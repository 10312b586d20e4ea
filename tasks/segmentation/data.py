"""Segmentation data: folder layout, checks that name the bad file, joint augmentation, batching.

Layout (a mask belongs to the image with the same file stem)::

    DATA/train/images/0001.jpg   DATA/train/masks/0001.png
    DATA/val/images/…            DATA/val/masks/…          (optional: else a seeded split of train)
    DATA/classes.txt                                        (optional: one class name per line)

``image/`` + ``label/`` (ISBI style), ``mask/`` and ``labels/`` are accepted too, ``valid/`` or
``validation/`` for the val split, and ``DATA/images`` + ``DATA/masks`` without split folders.

Masks are PNGs of class indices: grayscale, or palette PNGs (read as their indices; RGB colour
masks are refused). Masks that hold only 0 and 255 are binary: 255 becomes class 1 (a notice is
printed). Otherwise ``--ignore-index`` (default 255) marks pixels left out of loss and metrics.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from resnet_backbones.errors import UserError

from ..data.io import DataError, list_images, read_mask, read_rgb
from ..data.seeding import sample_seed

log = logging.getLogger(__name__)

IMAGE_DIRS = ("images", "image", "imgs")
MASK_DIRS = ("masks", "mask", "labels", "label")
VAL_DIRS = ("val", "valid", "validation")
DEFAULT_IGNORE = 255


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path


@dataclass
class Layout:
    """Image/mask pairs of a data folder; ``val`` is None when it has no val split."""

    root: Path
    train: list[Pair]
    val: list[Pair] | None
    class_names: list[str] | None


@dataclass(frozen=True)
class LabelSpec:
    """How mask values become class indices."""

    num_classes: int
    ignore_index: int  # also the value of padded pixels
    binary255: bool = False  # masks are 0/255: 255 → class 1


def _subdir(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_dir()), None)


def split_dirs(folder: Path) -> tuple[Path, Path] | None:
    """``(images dir, masks dir)`` inside ``folder``; None if it has neither."""
    img, msk = _subdir(folder, IMAGE_DIRS), _subdir(folder, MASK_DIRS)
    if img is None and msk is None:
        return None
    if img is None or msk is None:
        have, want = (img, MASK_DIRS) if msk is None else (msk, IMAGE_DIRS)
        raise DataError(f"{folder} has {have.name}/ but no {' or '.join(f'{n}/' for n in want)} folder "
                        "next to it; segmentation needs images/ + masks/ (or image/ + label/)")
    return img, msk


def pair_files(img_dir: Path, mask_dir: Path) -> list[Pair]:
    """Match images and masks by file stem; anything unmatched is an error naming the file."""
    by_stem: list[dict[str, Path]] = []
    for folder in (img_dir, mask_dir):
        files: dict[str, Path] = {}
        for p in list_images(folder):
            if p.stem in files:
                raise DataError(f"{files[p.stem].name} and {p.name} in {folder} share the stem {p.stem!r}; "
                                "masks are matched by stem, so keep one of them")
            files[p.stem] = p
        by_stem.append(files)
    images, masks = by_stem
    if not images:
        raise DataError(f"no images in {img_dir} (extensions: png, jpg, tif, bmp, webp…)")
    for stems, have, other, kind in ((images.keys() - masks.keys(), images, mask_dir, "image"),
                                     (masks.keys() - images.keys(), masks, img_dir, "mask")):
        if stems:
            first = have[min(stems)]
            more = f" (and {len(stems) - 1} more)" if len(stems) > 1 else ""
            want = "mask" if kind == "image" else "image"
            raise DataError(f"{kind} {first} has no {want} with stem {first.stem!r} in {other}{more}; "
                            f"add it or remove the {kind}")
    return [Pair(images[s], masks[s]) for s in sorted(images)]


def find_layout(root: str | Path) -> Layout:
    """Read the folder layout described in this module's docstring."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} not found")
    train_dirs = split_dirs(root / "train") if (root / "train").is_dir() else None
    if train_dirs is None:
        train_dirs = split_dirs(root)
    if train_dirs is None:
        raise DataError(f"{root} has no train/images + train/masks (or images/ + masks/, image/ + label/) "
                        "folders; see `resnet-tasks finetune --task segmentation --help`")
    val_root = _subdir(root, VAL_DIRS)
    val_dirs = split_dirs(val_root) if val_root is not None else None
    names_file = root / "classes.txt"
    names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()] if names_file.is_file() else None
    return Layout(root, pair_files(*train_dirs), pair_files(*val_dirs) if val_dirs else None, names)


def seeded_split(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Hold out ``val_fraction`` of ``pairs`` (at least one, and at least one left to train on)."""
    if len(pairs) < 2:
        raise DataError(f"only {len(pairs)} image in {pairs[0].image.parent}; need at least 2 to make a "
                        "val split (or add a val/ folder)")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n_val = min(len(pairs) - 1, max(1, round(len(pairs) * val_fraction)))
    g = torch.Generator().manual_seed(sample_seed(seed, "val-split"))
    perm = torch.randperm(len(pairs), generator=g).tolist()
    val = set(perm[:n_val])
    return [p for i, p in enumerate(pairs) if i not in val], [p for i, p in enumerate(pairs) if i in val]


# ---- checking masks ---------------------------------------------------------------------------
def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}; fix or remove it") from None


@dataclass(frozen=True)
class MaskScan:
    """What one pass over a mask found: its label values, their pixel counts, its size."""

    pair: Pair
    values: np.ndarray
    counts: np.ndarray
    height: int
    width: int


def scan_masks(pairs: Sequence[Pair]) -> list[MaskScan]:
    """Read every mask once; a mask whose size differs from its image raises."""
    out = []
    for pair in pairs:
        mask = read_mask(pair.mask)
        w, h = _image_size(pair.image)
        if mask.shape != (h, w):
            raise DataError(f"mask {pair.mask} is {mask.shape[1]}x{mask.shape[0]} but its image {pair.image} "
                            f"is {w}x{h}; masks must have their image's size")
        values, counts = np.unique(mask, return_counts=True)
        out.append(MaskScan(pair, values, counts, h, w))
    return out


def resolve_labels(scans: Sequence[MaskScan], num_classes: int | None, ignore_index: int | None) -> LabelSpec:
    """Decide num_classes / ignore_index / binary 0-255 from the masks and check every value."""
    values = set().union(*(s.values.tolist() for s in scans))
    binary255 = ignore_index is None and 255 in values and values <= {0, 255}
    ignore = DEFAULT_IGNORE if ignore_index is None else ignore_index
    if binary255:
        log.info("note: masks hold only 0 and 255; reading them as binary (255 → class 1). "
                 "Pass --ignore-index 255 if 255 means 'ignore' instead.")
        values = {0, 1}
    if num_classes is None:
        num_classes = max((v for v in values if v != ignore), default=0) + 1
        if num_classes < 2:
            raise DataError(f"all masks hold class 0 only (first: {scans[0].pair.mask}); "
                            "pass --num-classes or check the masks")
    spec = LabelSpec(num_classes, ignore, binary255)
    check_labels(scans, spec)
    return spec


def check_labels(scans: Sequence[MaskScan], spec: LabelSpec) -> None:
    """Every mask value must be a class index or the ignore value; errors name the mask."""
    if spec.num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {spec.num_classes}")
    if 0 <= spec.ignore_index < spec.num_classes:
        raise UserError(f"ignore_index {spec.ignore_index} is a class index (num_classes {spec.num_classes}); "
                        "choose a value outside 0…num_classes-1, e.g. 255")
    bad_files = []
    for scan in scans:
        values = np.where(scan.values == 255, 1, scan.values) if spec.binary255 else scan.values
        bad = [int(v) for v in values if v != spec.ignore_index and not 0 <= v < spec.num_classes]
        if bad:
            bad_files.append((scan.pair.mask, bad))
    if bad_files:
        path, bad = bad_files[0]
        more = f" ({len(bad_files) - 1} more masks too)" if len(bad_files) > 1 else ""
        raise DataError(f"mask {path} holds label value(s) {', '.join(map(str, bad))} but num_classes is "
                        f"{spec.num_classes} (valid 0…{spec.num_classes - 1}, ignore {spec.ignore_index}){more}; "
                        f"pass --num-classes {max(max(b) for _, b in bad_files) + 1} or --ignore-index, "
                        "or fix the mask")


def class_pixel_counts(scans: Sequence[MaskScan], spec: LabelSpec) -> np.ndarray:
    counts = np.zeros(spec.num_classes, dtype=np.int64)
    for scan in scans:
        values = np.where(scan.values == 255, 1, scan.values) if spec.binary255 else scan.values
        keep = (values >= 0) & (values < spec.num_classes)
        np.add.at(counts, values[keep], scan.counts[keep])
    return counts


# ---- augmentation and datasets ------------------------------------------------------------------
def train_transform(crop: int, mean: Sequence[float], std: Sequence[float], ignore_index: int,
                    scale: float = 0.25, color: float = 0.2, vflip: bool = False):
    """Joint image+mask augmentation: rescale, pad, random crop, flips; colour jitter on the image."""
    import albumentations as A
    import cv2
    from albumentations.pytorch import ToTensorV2

    ops = []
    if scale > 0:
        ops.append(A.RandomScale(scale_limit=(-scale, scale), interpolation=cv2.INTER_LINEAR,
                                 mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    ops += [A.PadIfNeeded(crop, crop, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0,
                          fill_mask=ignore_index),
            A.RandomCrop(crop, crop), A.HorizontalFlip(p=0.5)]
    if vflip:
        ops.append(A.VerticalFlip(p=0.5))
    if color > 0:
        ops.append(A.ColorJitter(color, color, color, min(0.5, color / 4), p=0.8))
    ops += [A.Normalize(mean, std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(ops)


def eval_transform(mean: Sequence[float], std: Sequence[float]):
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    return A.Compose([A.Normalize(mean, std, max_pixel_value=255.0), ToTensorV2()])


class SegmentationDataset(Dataset):
    """``{"image": 3xHxW float, "mask": HxW long}`` per pair; augmentation seeded by (seed, epoch, index)."""

    def __init__(self, pairs: Sequence[Pair], transform, spec: LabelSpec, seed: int = 0,
                 augment: bool = False) -> None:
        self.pairs, self.transform, self.spec = list(pairs), transform, spec
        self.seed, self.augment, self.epoch = seed, augment, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pair = self.pairs[i]
        image, mask = read_rgb(pair.image), read_mask(pair.mask)
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask {pair.mask} is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{pair.image} is {image.shape[1]}x{image.shape[0]}")
        if self.spec.binary255:
            mask = mask == 255
        # cv2 (used by albumentations) has no int64; uint8 covers the usual label range.
        mask = mask.astype(np.uint8 if max(self.spec.num_classes, self.spec.ignore_index) < 256 else np.int32)
        if self.augment:
            self.transform.set_random_seed(sample_seed(self.seed, self.epoch, i))
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": torch.as_tensor(out["mask"]).long()}


def pad_collate(batch: list[dict[str, torch.Tensor]], ignore_index: int = DEFAULT_IGNORE) -> dict[str, torch.Tensor]:
    """Stack samples of different sizes: pad bottom/right (image 0, mask ``ignore_index``)."""
    h = max(b["image"].shape[-2] for b in batch)
    w = max(b["image"].shape[-1] for b in batch)
    images = batch[0]["image"].new_zeros(len(batch), batch[0]["image"].shape[0], h, w)
    masks = torch.full((len(batch), h, w), ignore_index, dtype=torch.long)
    for i, b in enumerate(batch):
        bh, bw = b["image"].shape[-2:]
        images[i, :, :bh, :bw] = b["image"]
        masks[i, :bh, :bw] = b["mask"]
    sizes = torch.tensor([b["image"].shape[-2:] for b in batch], dtype=torch.long)
    return {"image": images, "mask": masks, "size": sizes}
