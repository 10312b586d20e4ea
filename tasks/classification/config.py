"""Classification settings (each field is also a ``resnet-tasks finetune`` flag)."""
from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field

from .. import register_task
from ..config import ConfigError, TaskConfig, option

# Used instead of the defaults when no --data is given (values the user set still win):
# the generated demo images are small, so a run takes about a minute on a 2-core CPU.
DEMO_DEFAULTS = {"img_size": 64, "epochs": 6, "batch_size": 32, "lr": 3e-3, "backbone_lr_mult": 1.0}


@register_task("classification", task="tasks.classification.task:ClassificationTask", demo_defaults=DEMO_DEFAULTS)
@dataclass
class ClassificationConfig(TaskConfig):
    """Image classification (linear, prototype or imprinted head), few-shot included, on a registry backbone."""

    # Several folders train together; a string is one folder (paths are not split at commas).
    data: typing.Optional[list[str]] = field(default=None, metadata={
        "help": "Data folder (class folders, or IDX/CIFAR files as published), or torchvision:MNIST|FashionMNIST|"
                "CIFAR10|CIFAR100 (see --data-root); repeat image folders (or a YAML list) to train on several at "
                "once: classes with the same relative path merge (default: the embedded demo set).",
        "choices": None, "split_commas": False})
    data_root: typing.Optional[str] = option(None, "Where --data torchvision:NAME is read from, or downloaded to "
                                             "when its files are absent (default: $TORCH_HOME/datasets, i.e. "
                                             "~/.cache/torch/datasets).")
    download: bool = option(True, "Download a torchvision data set missing from --data-root.")
    in_chans: typing.Optional[int] = option(None, "Input channels of the model (default: the data's: 1 for "
                                            "MNIST/FashionMNIST and grayscale IDX files, else 3); images are "
                                            "converted to it.", ge=1)
    stem: str = option("imagenet", "Backbone stem: imagenet (7x7/2 conv + max-pool) or cifar (3x3/1 conv, no "
                       "max-pool: for 28-64 px images).", ("imagenet", "cifar"))
    drop_rate: float = option(0.0, "Dropout before the classifier (timm's drop_rate).", ge=0, lt=1)
    head: str = option("linear", "linear; cosine (cosine classifier with a learnt scale, Baseline++); "
                       "prototype (cosine to class means, no training); imprint (cosine head initialised "
                       "from class means, then trained).", ("linear", "cosine", "prototype", "imprint"))
    cosine_margin: float = option(0.0, "Additive margin on the true class's cosine while training a cosine "
                                  "or imprint head (CosFace); 0 = off.", ge=0, lt=1)
    label_smoothing: float = option(0.1, "Label smoothing of the cross-entropy loss.", ge=0, lt=1)
    augment: str = option("imagenet", "Training augmentation: imagenet (random-resized crop, flip, colour "
                          "jitter: photos); shift (whole image, small shifts/rotations/scalings: characters, "
                          "digits, documents, where flips and crops change the class); none.",
                          ("imagenet", "shift", "none"))
    nested_classes: bool = option(False, "Classes are two folder levels deep (e.g. alphabet/character).")
    skip_bad_images: bool = option(False, "Skip unreadable images (count printed) instead of stopping.")
    val_fraction: float = option(0.2, "Share held out for validation when DATA has one split only (no val/, "
                                 "no test files): of each class for folders, at random for IDX/CIFAR.", gt=0, lt=1)
    unfreeze_after: typing.Optional[int] = option(None, "Freeze schedule: unfreeze the whole backbone "
                                                  "after this many epochs.", ge=0)
    sampler: str = option("shuffle", "Training order: shuffle (each image once per epoch) or balanced (drawn "
                          "with replacement, every class equally often; seeded, resumable).", ("shuffle", "balanced"))
    class_weights: typing.Optional[str] = option(
        None, "Cross-entropy class weights: 'auto' (images / (classes × images of the class), as sklearn's "
              "'balanced') or comma-separated numbers in class order.")
    cache_features: bool = option(True, "With a fully frozen backbone, compute features once and "
                                  "train only the head on them (no augmentation).")

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):  # ClassificationConfig(data="folder") from Python
            self.data = [os.fspath(self.data)]
        super().__post_init__()
        if self.cosine_margin and self.head not in ("cosine", "imprint"):
            raise ConfigError(f"cosine_margin needs head cosine or imprint, not {self.head!r}")
        from .arrays import TORCHVISION_DATASETS, is_dataset_name

        for spec in self.data or []:
            if is_dataset_name(spec) and spec.split(":", 1)[1] not in TORCHVISION_DATASETS:
                raise ConfigError(f"data {spec!r}: torchvision data sets are "
                                  f"{', '.join('torchvision:' + n for n in TORCHVISION_DATASETS)}")

    def data_folders(self) -> list[str]:
        from .arrays import is_dataset_name

        return [d for d in self.data or [] if not is_dataset_name(d)]
