"""Folder-per-class image data.

Layout: ``DATA/train/<class>/*`` and ``DATA/val/<class>/*``; without ``val/`` (or without
``train/``) a seeded stratified split is made. With ``nested_classes`` a class is two levels deep
(``DATA/train/<alphabet>/<character>/*``, named ``alphabet/character``).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from resnet_backbones import Preprocessing

from ..data.io import IMAGE_EXTS, DataError, check_readable, read_rgb
from ..data.seeding import sample_seed, stratified_pick

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str


def scan_classes(root: Path, nested: bool) -> list[Sample]:
    """Samples under ``root`` with the class taken from the folder (or two folders when nested)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} not found")
    depth = 2 if nested else 1
    samples = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS or any(s.startswith(".") for s in rel.parts):
            continue
        if len(rel.parts) <= depth:
            if len(rel.parts) == 1:
                continue  # stray files next to the class folders
            raise DataError(f"{p} lies {len(rel.parts) - 1} folder(s) deep, but classes are {depth} deep "
                            f"({'drop' if nested else 'use'} --nested-classes)")
        samples.append(Sample(p, "/".join(rel.parts[:depth])))
    if not samples:
        raise DataError(f"no images found in class folders under {root} (expected {root}/<class>/*.jpg"
                        f"{'' if not nested else ' two levels deep'})")
    if not nested and all(len(s.path.relative_to(root).parts) > 2 for s in samples):
        log.info(f"note: every class folder under {root} holds its images in subfolders; if those subfolders "
                 "are the classes (e.g. alphabet/character), pass --nested-classes")
    return samples


def drop_unreadable(samples: list[Sample], skip: bool) -> list[Sample]:
    """Check every file's header before training, so a bad file cannot stop a run midway."""
    bad = [s for s in samples if not check_readable(s.path)]
    if bad and not skip:
        names = ", ".join(str(s.path) for s in bad[:3])
        raise DataError(f"{len(bad)} unreadable image(s): {names}{' …' if len(bad) > 3 else ''}; "
                        "remove them or pass --skip-bad-images")
    if bad:
        log.info(f"skipped {len(bad)} unreadable image(s) (--skip-bad-images)")
    bad_set = set(bad)
    return [s for s in samples if s not in bad_set]


def load_splits(root: Path, nested: bool, val_fraction: float, seed: int, skip_bad: bool
                ) -> tuple[list[Sample], list[Sample]]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} not found")
    if (root / "train").is_dir():
        train = scan_classes(root / "train", nested)
        val = scan_classes(root / "val", nested) if (root / "val").is_dir() else None
    else:
        train, val = scan_classes(root, nested), None
    train = drop_unreadable(train, skip_bad)
    if val is None:
        train, val = split_stratified(train, val_fraction, seed)
    else:
        val = drop_unreadable(val, skip_bad)
        a, b = {s.label for s in train}, {s.label for s in val}
        if a != b:
            only_t, only_v = sorted(a - b)[:5], sorted(b - a)[:5]
            raise DataError(f"train and val classes differ under {root}: only in train {only_t}, only in val "
                            f"{only_v}; make both folders hold the same class folders")
    return train, val


@dataclass(frozen=True)
class FolderMerge:
    """What training on several data folders at once did: ``merged`` classes (same relative path)
    were found in more than one folder and became one class."""

    folders: list[str]
    classes_per_folder: list[int]
    classes: int
    merged: int
    merged_examples: list[str]

    def summary(self) -> str:
        return (f"{len(self.folders)} data folders ({' + '.join(map(str, self.classes_per_folder))} classes) → "
                f"{self.classes} classes; {self.merged} merged (same relative path in several folders"
                f"{', e.g. ' + ', '.join(self.merged_examples) if self.merged else ''})")


def load_folders(roots: Sequence[Path], nested: bool, val_fraction: float, seed: int, skip_bad: bool
                 ) -> tuple[list[Sample], list[Sample], FolderMerge]:
    """:func:`load_splits` of each folder, concatenated: a class is its path relative to its folder,
    so ``small1/Greek/alpha`` and ``small2/Greek/alpha`` become one class ``Greek/alpha``."""
    roots = [Path(r) for r in roots]
    seen: dict[Path, Path] = {}
    for r in roots:
        if r.resolve() in seen:
            raise DataError(f"data folder {r} is given twice (as {seen[r.resolve()]}); give each folder once")
        seen[r.resolve()] = r
    train: list[Sample] = []
    val: list[Sample] = []
    folder_classes = []
    for r in roots:
        t, v = load_splits(r, nested, val_fraction, seed, skip_bad)
        train += t
        val += v
        folder_classes.append({s.label for s in t})
    counts = Counter(c for classes in folder_classes for c in classes)
    merged = sorted(c for c, n in counts.items() if n > 1)
    return train, val, FolderMerge([str(r) for r in roots], [len(c) for c in folder_classes], len(counts),
                                   len(merged), merged[:3])


def split_stratified(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    by_class: dict[str, int] = {}
    for s in samples:
        by_class[s.label] = by_class.get(s.label, 0) + 1
    small = [c for c, n in by_class.items() if n < 2]
    if small:
        raise DataError(f"class(es) {small[:5]} have fewer than 2 images; cannot split off validation data")
    n_val = max(1, round(min(by_class.values()) * val_fraction))
    val_idx, train_idx = stratified_pick([s.label for s in samples], n_val, seed, tag="val-split")
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


AUGMENTATIONS = ("imagenet", "shift", "none")


def train_transform(size: int, pre: Preprocessing, augment: str = "imagenet") -> A.Compose:
    """Training augmentation by policy (``pre.mean`` has one value per input channel).

    ``imagenet``: random-resized crop, horizontal flip, colour jitter (photos; none on grayscale,
    where there is no colour to jitter). ``shift``: the whole
    image resized, then small random translations, rotations and scalings with the border
    repeated — for images whose orientation, colour and framing carry meaning (handwriting,
    characters, digits, documents), where flips and crops change the class. ``none``: resize only.
    """
    if augment == "imagenet":
        ops = [A.RandomResizedCrop(size=(size, size), scale=(0.35, 1.0)), A.HorizontalFlip()]
        if len(pre.mean) == 3:
            ops.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8))
    elif augment == "shift":
        ops = [A.Resize(size, size),
               A.Affine(translate_percent=(-0.0625, 0.0625), rotate=(-10, 10), scale=(0.9, 1.1), shear=(-6, 6),
                        border_mode=cv2.BORDER_REPLICATE, p=1.0)]
    elif augment == "none":
        ops = [A.Resize(size, size)]
    else:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    return A.Compose([*ops, A.Normalize(mean=pre.mean, std=pre.std), ToTensorV2()])


def eval_transform(size: int, pre: Preprocessing, augment: str = "imagenet") -> A.Compose:
    """What the model sees at evaluation: framed as in training (see :func:`train_transform`)."""
    if augment == "imagenet":
        # Resize then centre-crop in the weights' own ratio (e.g. 232 → 224 for torchvision V2).
        resize = max(size, round(size * pre.resize_size / pre.input_size))
        ops = [A.SmallestMaxSize(max_size=resize), A.CenterCrop(size, size)]
    else:  # trained on the whole image: a centre crop would zoom in and cut off its border
        ops = [A.Resize(size, size)]
    return A.Compose([*ops, A.Normalize(mean=pre.mean, std=pre.std), ToTensorV2()])


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """``H×W×C`` uint8 as ``channels`` channels: RGB → gray (ITU-R 601 luma, as PIL's ``convert("L")``),
    gray → RGB repeated.

    >>> to_channels(np.zeros((2, 2, 3), np.uint8), 1).shape, to_channels(np.zeros((2, 2, 1), np.uint8), 3).shape
    ((2, 2, 1), (2, 2, 3))
    """
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 3 and channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    if have == 1:
        return np.repeat(image, channels, axis=-1)
    raise DataError(f"cannot turn {have}-channel images into {channels} channels; set in_chans to {have}")


class SeededTransformDataset(Dataset):
    """Base of the datasets below: item ``i`` is augmented with a seed of (seed, epoch, i), and
    images arrive with the model's channel count."""

    def __init__(self, transform: A.Compose, seed: int = 0, channels: int = 3) -> None:
        self.transform, self.seed, self.epoch, self.channels = transform, seed, 0, channels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def image(self, i: int) -> np.ndarray:
        """Item ``i``'s image as ``H×W×C`` uint8, before the transform."""
        raise NotImplementedError

    def label(self, i: int) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.transform.set_random_seed(sample_seed(self.seed, self.epoch, i))
        return self.transform(image=to_channels(self.image(i), self.channels))["image"], self.label(i)


class ImageFolderDataset(SeededTransformDataset):
    """(image tensor, class index) pairs from image files; augmentation seeded per (seed, epoch, index)."""

    def __init__(self, samples: list[Sample], classes: list[str], transform: A.Compose, seed: int = 0,
                 channels: int = 3) -> None:
        super().__init__(transform, seed, channels)
        self.samples, self.classes = samples, classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        unknown = sorted({s.label for s in samples} - set(self.class_to_idx))
        if unknown:
            raise DataError(f"class(es) {unknown[:5]} are not among the model's classes {classes[:10]}")

    def with_transform(self, transform: A.Compose) -> "ImageFolderDataset":
        return ImageFolderDataset(self.samples, self.classes, transform, self.seed, self.channels)

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> np.ndarray:
        return read_rgb(self.samples[i].path)

    def label(self, i: int) -> int:
        return self.class_to_idx[self.samples[i].label]

    @property
    def targets(self) -> np.ndarray:
        return np.array([self.class_to_idx[s.label] for s in self.samples])


class ArrayDataset(SeededTransformDataset):
    """(image tensor, class index) pairs from ``N×H×W×C`` uint8 images held in memory (IDX, CIFAR,
    torchvision data sets: see ``arrays.py``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.Compose, seed: int = 0,
                 channels: int | None = None) -> None:
        super().__init__(transform, seed, images.shape[-1] if channels is None else channels)
        self.images, self.labels = images, labels

    def with_transform(self, transform: A.Compose) -> "ArrayDataset":
        return ArrayDataset(self.images, self.labels, transform, self.seed, self.channels)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def label(self, i: int) -> int:
        return int(self.labels[i])

    @property
    def targets(self) -> np.ndarray:
        return self.labels


def balanced_sample_weights(labels: Sequence[str]) -> list[float]:
    """Each sample's chance of being drawn so that every class is drawn equally often: 1 / its class's count.

    >>> balanced_sample_weights(["a", "a", "a", "b"])
    [0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 1.0]
    """
    counts = Counter(labels)
    return [1.0 / counts[y] for y in labels]


def class_weights(spec: str, labels: Sequence[str], classes: list[str]) -> list[float]:
    """Cross-entropy weights per class: ``auto`` is sklearn's 'balanced' (n / (classes × count)), else
    ``spec`` gives one number per class.

    >>> class_weights("auto", ["a", "a", "a", "b"], ["a", "b"])
    [0.6666666666666666, 2.0]
    """
    if spec == "auto":
        counts = Counter(labels)
        return [len(labels) / (len(classes) * counts[c]) if counts[c] else 0.0 for c in classes]
    try:
        w = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise DataError(f"--class-weights must be 'auto' or comma-separated numbers, got {spec!r}") from None
    if len(w) != len(classes) or any(x < 0 for x in w):
        raise DataError(f"--class-weights needs {len(classes)} non-negative numbers (one per class, in the order "
                        f"{', '.join(classes[:5])}{' …' if len(classes) > 5 else ''}), got {spec!r}")
    return w
