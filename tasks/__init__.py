"""Task registry: each task registers its typed config, which names its :class:`tasks.base.Task`.

The config is the registered object because it is light (no torch): the CLI builds each task's
flags from it, and ``--help`` stays fast. The task class is imported only when a run needs it::

    @register_task("classification", task="tasks.classification.task:ClassificationTask")
    @dataclass
    class ClassificationConfig(TaskConfig):
        ...

Built-in tasks live in ``tasks/<name>/`` (``config.py`` + ``task.py``). A third-party package adds
a task with an entry point in the group ``resnet_tasks.tasks`` naming the module that registers it,
e.g. in its ``pyproject.toml``: ``[project.entry-points."resnet_tasks.tasks"] mytask = "mypkg.config"``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from resnet_backbones.errors import UserError

BUILTIN_TASKS = ("classification", "segmentation", "detection")
ENTRY_POINT_GROUP = "resnet_tasks.tasks"


@dataclass(frozen=True)
class TaskEntry:
    """A registered task: its config class, where its Task class lives, its demo-set defaults."""

    name: str
    config_cls: type
    task_path: str  # "module:Class"
    demo_defaults: dict[str, Any] = field(default_factory=dict)

    def task_class(self) -> type:
        module, _, cls = self.task_path.partition(":")
        return getattr(importlib.import_module(module), cls)


_REGISTRY: dict[str, TaskEntry] = {}
_discovered = False


def register_task(name: str, task: str, demo_defaults: dict[str, Any] | None = None):
    """Class decorator for a task's config dataclass; ``task`` is ``"module:TaskClass"``.

    ``demo_defaults`` replace the defaults when no ``--data`` is given (values the user set still win).
    A name registered twice by different classes is refused.
    """
    def deco(cfg_cls: type) -> type:
        old = _REGISTRY.get(name)
        if old is not None and old.config_cls.__qualname__ != cfg_cls.__qualname__:
            raise ValueError(f"task {name!r} is already registered by {old.config_cls.__module__}")
        _REGISTRY[name] = TaskEntry(name, cfg_cls, task, dict(demo_defaults or {}))
        return cfg_cls
    return deco


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for name in BUILTIN_TASKS:
        importlib.import_module(f"tasks.{name}.config")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value.partition(":")[0])


def task_names() -> list[str]:
    """Registered task names, built-ins first."""
    _discover()
    return list(_REGISTRY)


def get_task_entry(name: str) -> TaskEntry:
    _discover()
    if name not in _REGISTRY:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def get_config_class(name: str) -> type:
    return get_task_entry(name).config_cls


def get_task_class(name: str) -> type:
    return get_task_entry(name).task_class()
