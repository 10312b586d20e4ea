"""Task registry: heads, data and metrics for classification, segmentation and detection.

Each task lives in ``tasks/<name>/`` with ``config.py`` (its typed config, light to import: the CLI
builds its flags from it) and ``task.py`` (the :class:`tasks.base.Task` subclass).
"""
from __future__ import annotations

import importlib

from resnet_backbones.errors import UserError

TASK_NAMES = ("classification", "segmentation", "detection")
_CONFIGS = {"classification": "ClassificationConfig", "segmentation": "SegmentationConfig",
            "detection": "DetectionConfig"}
_TASKS = {"classification": "ClassificationTask", "segmentation": "SegmentationTask",
          "detection": "DetectionTask"}


def _check(name: str) -> None:
    if name not in TASK_NAMES:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)}")


def get_config_class(name: str):
    _check(name)
    try:
        return getattr(importlib.import_module(f"tasks.{name}.config"), _CONFIGS[name])
    except (ModuleNotFoundError, AttributeError):
        raise UserError(f"--task {name} is not available yet in this version") from None


def get_task_class(name: str):
    _check(name)
    get_config_class(name)
    return getattr(importlib.import_module(f"tasks.{name}.task"), _TASKS[name])


def available_config_classes() -> dict[str, type]:
    """Config classes of the tasks that are installed (used to build the CLI flags)."""
    out = {}
    for name in TASK_NAMES:
        try:
            out[name] = get_config_class(name)
        except UserError:
            pass
    return out
