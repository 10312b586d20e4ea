"""Classification settings (each field is also a ``resnet-tasks finetune`` flag)."""
from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field

from .. import register_task
from ..config import TaskConfig, option

# Used instead of the defaults when no --data is given (values the user set still win):
# the generated demo images are small, so a run takes about a minute on a 2-core CPU.
DEMO_DEFAULTS = {"img_size": 64, "epochs": 6, "batch_size": 32, "lr": 3e-3, "backbone_lr_mult": 1.0}


@register_task("classification", task="tasks.classification.task:ClassificationTask", demo_defaults=DEMO_DEFAULTS)
@dataclass
class ClassificationConfig(TaskConfig):
    """Image classification (linear, prototype or imprinted head), few-shot included, on a registry backbone."""

    # Several folders train together; a string is one folder (paths are not split at commas).
    data: typing.Optional[list[str]] = field(default=None, metadata={
        "help": "Data folder; repeat (or a YAML list) to train on several at once: classes with the same "
                "relative path merge (default: the embedded demo set).",
        "choices": None, "split_commas": False})
    head: str = option("linear", "linear; prototype (cosine to class means, no training); "
                       "imprint (cosine head initialised from class means, then trained).",
                       ("linear", "prototype", "imprint"))
    label_smoothing: float = option(0.1, "Label smoothing of the cross-entropy loss.", ge=0, lt=1)
    nested_classes: bool = option(False, "Classes are two folder levels deep (e.g. alphabet/character).")
    skip_bad_images: bool = option(False, "Skip unreadable images (count printed) instead of stopping.")
    val_fraction: float = option(0.2, "Share of each class held out for validation when DATA has no val/.",
                                gt=0, lt=1)
    unfreeze_after: typing.Optional[int] = option(None, "Freeze schedule: unfreeze the whole backbone "
                                                  "after this many epochs.", ge=0)
    cache_features: bool = option(True, "With a fully frozen backbone, compute features once and "
                                  "train only the head on them (no augmentation).")

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):  # ClassificationConfig(data="folder") from Python
            self.data = [os.fspath(self.data)]
        super().__post_init__()
