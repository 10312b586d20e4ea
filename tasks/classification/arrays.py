"""Classification data held in memory as arrays: IDX files (MNIST layout), CIFAR python pickles, and
torchvision's standard datasets by name (``torchvision:MNIST``…).

Files are read with torchvision's own readers (``read_image_file``/``read_label_file`` for IDX,
the dataset classes for named sets); a file that cannot be read stops the run with its name.
Images are ``N×H×W×C`` uint8 (C = 1 for grayscale); the data publishes its channel count and
pixel statistics, which the task reads instead of keeping a table of constants.
"""
from __future__ import annotations

import logging
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.io import DataError

log = logging.getLogger(__name__)

DATASET_PREFIX = "torchvision:"
TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100")
IDX_IMAGES, IDX_LABELS = "-images-idx3-ubyte", "-labels-idx1-ubyte"
TRAIN_PREFIXES, TEST_PREFIXES = ("train",), ("t10k", "test")
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@dataclass(frozen=True)
class ArraySplit:
    """Images ``N×H×W×C`` uint8 and their class indices ``N`` (int64)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be N×H×W×C uint8, got {self.images.shape} {self.images.dtype}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def take(self, indices) -> "ArraySplit":
        return ArraySplit(self.images[indices], self.labels[indices])

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ArrayData:
    """A labelled data set: ``train``, and ``val`` when the source ships a second (test) split."""

    source: str
    classes: list[str]
    train: ArraySplit
    val: ArraySplit | None

    @property
    def channels(self) -> int:
        return self.train.images.shape[-1]

    def pixel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training pixels, in 0-1 (what ``A.Normalize`` takes)."""
        px = self.train.images.reshape(-1, self.channels)
        mean = px.mean(0, dtype=np.float64) / 255
        std = px.std(0, dtype=np.float64) / 255
        return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def is_dataset_name(spec: str) -> bool:
    return str(spec).startswith(DATASET_PREFIX)


def array_format(folder: Path) -> str | None:
    """``"idx"`` or ``"cifar"`` when ``folder`` holds such files, else None (an image folder)."""
    if not folder.is_dir():
        return None
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if any(IDX_IMAGES in n for n in names):
        return "idx"
    if "test_batch" in names or {"train", "meta"} <= names:
        return "cifar"
    return None


def is_array_source(spec: str) -> bool:
    """``--data`` names a torchvision data set or a folder of IDX/CIFAR files."""
    return is_dataset_name(spec) or array_format(Path(spec).expanduser()) is not None


def load_array_data(spec: str, data_root: str | None = None, download: bool = True) -> ArrayData:
    """``torchvision:NAME`` (read from or downloaded to ``data_root``) or a folder of IDX/CIFAR files."""
    if is_dataset_name(spec):
        return load_torchvision(spec[len(DATASET_PREFIX):], data_root, download)
    folder = Path(spec).expanduser()
    fmt = array_format(folder)
    if fmt == "idx":
        return read_idx_folder(folder)
    if fmt == "cifar":
        return read_cifar_folder(folder)
    raise DataError(f"{folder} holds neither IDX (*{IDX_IMAGES}[.gz]) nor CIFAR (data_batch_*, test_batch) files")


# ---- IDX (MNIST, Fashion-MNIST, KMNIST, EMNIST…) -------------------------------------------------
def read_idx(path: Path, kind: str) -> np.ndarray:
    """One IDX file (``kind`` "images" or "labels"), plain or ``.gz``, by torchvision's readers."""
    from torchvision.datasets.mnist import read_image_file, read_label_file
    from torchvision.datasets.utils import extract_archive

    reader = read_image_file if kind == "images" else read_label_file
    try:
        if path.suffix == ".gz":  # torchvision's readers take the decompressed file (its download extracts them)
            with tempfile.TemporaryDirectory() as tmp:
                return reader(extract_archive(str(path), tmp)).numpy()
        return reader(str(path)).numpy()
    except Exception as e:  # the readers assert, reshape and decompress: any failure means a bad file
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise DataError(f"cannot read IDX {kind} file {path} ({why.splitlines()[0]}); it is truncated or not an "
                        "IDX file: download it again") from None


def read_idx_folder(folder: Path) -> ArrayData:
    """``PREFIX-images-idx3-ubyte[.gz]`` + ``PREFIX-labels-idx1-ubyte[.gz]`` pairs; prefix ``train`` is the
    training split and ``t10k``/``test`` the validation split; a folder with one pair has one split."""
    pairs: dict[str, dict[str, Path]] = {}
    for p in sorted(folder.iterdir()):
        name = p.name[:-3] if p.name.endswith(".gz") else p.name
        for kind, suffix in (("images", IDX_IMAGES), ("labels", IDX_LABELS)):
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], {})[kind] = p
    splits = {}
    for prefix, files in pairs.items():
        if len(files) != 2:
            have = next(iter(files.values()))
            missing = f"{prefix}{IDX_LABELS if 'images' in files else IDX_IMAGES}[.gz]"
            raise DataError(f"{have} has no partner {missing} in {folder}; add it")
        images, labels = read_idx(files["images"], "images"), read_idx(files["labels"], "labels")
        if len(images) != len(labels):
            raise DataError(f"{files['images']} holds {len(images)} images but {files['labels']} "
                            f"{len(labels)} labels; one of them is from another set")
        splits[prefix] = ArraySplit(images[..., None], labels.astype(np.int64))
    train, val = _pick_splits(splits, folder)
    n_classes = int(max(train.labels.max(), val.labels.max() if val is not None else 0)) + 1
    return ArrayData(f"IDX files in {folder}", [str(i) for i in range(n_classes)], train, val)


def _pick_splits(splits: dict[str, ArraySplit], folder: Path) -> tuple[ArraySplit, ArraySplit | None]:
    if len(splits) == 1:
        return next(iter(splits.values())), None
    train = [s for p, s in splits.items() if p in TRAIN_PREFIXES]
    test = [s for p, s in splits.items() if p in TEST_PREFIXES]
    if len(splits) != 2 or len(train) != 1 or len(test) != 1:
        raise DataError(f"{folder} holds IDX sets {sorted(splits)}; expected one, or train + t10k (or test)")
    return train[0], test[0]


# ---- CIFAR python pickles --------------------------------------------------------------------------
def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # The published CIFAR pickles are Python 2 pickles of byte strings (torchvision reads them so too).
            return pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise DataError(f"CIFAR file {path} not found; the folder needs {', '.join(CIFAR10_FILES)} "
                        "(CIFAR-10) or train, test (CIFAR-100), plus their meta file") from None
    except Exception as e:
        raise DataError(f"cannot read CIFAR file {path} ({type(e).__name__}); it is truncated or not a CIFAR "
                        "python pickle: download it again") from None


def _cifar_split(paths: list[Path], label_key: str) -> ArraySplit:
    images, labels = [], []
    for p in paths:
        d = _unpickle(p)
        try:
            images.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(d[label_key], dtype=np.int64))
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"CIFAR file {p} lacks or garbles {e}; expected 'data' (N×3072 uint8) and "
                            f"'{label_key}'") from None
    return ArraySplit(np.concatenate(images), np.concatenate(labels))


def read_cifar_folder(folder: Path) -> ArrayData:
    """CIFAR-10 (``data_batch_1…5``, ``test_batch``, ``batches.meta``) or CIFAR-100 (``train``, ``test``,
    ``meta``) as published (the ``cifar-*-python`` folders); the training files alone make one split."""
    if (folder / "test_batch").exists() or (folder / "data_batch_1").exists():
        train_files = sorted(folder.glob("data_batch_*"))
        meta, names_key, label_key, test = folder / "batches.meta", "label_names", "labels", folder / "test_batch"
    else:
        train_files = [folder / "train"]
        meta, names_key, label_key, test = folder / "meta", "fine_label_names", "fine_labels", folder / "test"
    if not train_files:
        raise DataError(f"{folder} holds test_batch but no data_batch_* files; add the training batches")
    train = _cifar_split(train_files, label_key)
    val = _cifar_split([test], label_key) if test.exists() else None
    classes = [str(c) for c in _unpickle(meta).get(names_key, [])] if meta.exists() else []
    if not classes:
        classes = [str(i) for i in range(int(train.labels.max()) + 1)]
    return ArrayData(f"CIFAR files in {folder}", classes, train, val)


# ---- torchvision datasets by name ------------------------------------------------------------------
def default_data_root() -> Path:
    """``$TORCH_HOME/datasets`` (``~/.cache/torch/datasets``), next to torch's hub cache."""
    import torch

    return Path(torch.hub.get_dir()).parent / "datasets"


def _expected_files(name: str) -> str:
    if name in ("MNIST", "FashionMNIST"):
        return (f"{name}/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                "t10k-labels-idx1-ubyte (decompressed)")
    return "cifar-10-batches-py/ (CIFAR10) or cifar-100-python/ (CIFAR100), as extracted from the official tar.gz"


def load_torchvision(name: str, data_root: str | os.PathLike | None, download: bool = True) -> ArrayData:
    """``torchvision.datasets.NAME`` train split → training, test split → validation; downloaded into
    ``data_root`` only when its files are absent (and ``download``)."""
    import torchvision.datasets as tvd

    if name not in TORCHVISION_DATASETS:
        raise DataError(f"unknown torchvision data set {name!r}; choose one of {', '.join(TORCHVISION_DATASETS)}")
    root = Path(data_root).expanduser() if data_root else default_data_root()
    cls = getattr(tvd, name)
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError as e:
            if "not found" not in str(e):  # present but unreadable
                raise DataError(f"cannot read {name} under {root} ({str(e).splitlines()[0]}); delete its "
                                "folder to download it again") from None
            if not download:
                raise DataError(f"{name} is not in {root} and downloading is off; place {_expected_files(name)} "
                                f"under {root}, or drop --no-download") from None
            try:
                ds = cls(str(root), train=train, download=True)
            except Exception as e:
                why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DataError(f"cannot download {name} into {root} ({why}); offline, place "
                                f"{_expected_files(name)} under {root} (or pass --data-root DIR)") from None
        except Exception as e:  # files present but unreadable
            raise DataError(f"cannot read {name} under {root} ({type(e).__name__}: {e}); delete its folder "
                            "to download it again") from None
        images = np.asarray(ds.data, dtype=np.uint8)
        splits.append(ArraySplit(images if images.ndim == 4 else images[..., None],
                                 np.asarray(ds.targets, dtype=np.int64)))
    return ArrayData(f"torchvision {name} in {root}", [str(c) for c in ds.classes], splits[0], splits[1])


# ---- one split only: a fixed, seeded hold-out ----------------------------------------------------------
def split_off(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: ``round(n × val_fraction)`` drawn at random, fixed by ``seed`` alone.

    >>> train, val = split_off(10, 0.2, seed=0)
    >>> len(train), len(val), sorted([*train, *val]) == list(range(10))
    (8, 2, True)
    """
    import torch

    from ..data.seeding import sample_seed

    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(sample_seed(seed, "val-split"))).numpy()
    return np.sort(order[n_val:]), np.sort(order[:n_val])
