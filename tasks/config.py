"""Typed configuration: dataclasses are the single source of keys, defaults, types and CLI flags.

Only the edge (CLI / YAML) builds these from untyped dicts; everything inward takes typed objects.
An unknown key, or a value of the wrong type, is a :class:`ConfigError` that names it.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from resnet_backbones.errors import UserError


class ConfigError(UserError):
    """A config key or value is not valid."""


def option(default: Any, help: str, choices: tuple[str, ...] | None = None):
    """A config field; ``help`` becomes the CLI flag's help, ``choices`` are checked."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Engine settings shared by every task."""

    epochs: int = option(10, "Training epochs.")
    batch_size: int = option(16, "Images per step.")
    lr: float = option(1e-3, "Peak learning rate of the head; the backbone gets lr × backbone_lr_mult.")
    backbone_lr_mult: float = option(0.1, "Backbone LR as a fraction of the head LR.")
    optimizer: str = option("adamw", "Optimiser.", ("adamw", "sgd"))
    weight_decay: float = option(0.01, "Weight decay (never applied to norm layers or biases).")
    warmup_epochs: float = option(1.0, "Linear warmup length in epochs, then cosine decay to 0.")
    grad_clip: float = option(0.0, "Clip the gradient norm to this value (0 = off).")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    amp: typing.Optional[bool] = option(None, "Mixed precision (bf16, else fp16); default: on for CUDA.")
    channels_last: bool = option(True, "channels_last memory format on CUDA.")
    seed: int = option(0, "Seed for data order, few-shot sampling, splits and initialisation.")
    workers: int = option(2, "DataLoader worker processes.")
    out: typing.Optional[str] = option(None, "Run folder (default runs/<task>-<time>).")


@dataclass
class TaskConfig:
    """Settings every task has; each task subclasses it with its own fields."""

    data: typing.Optional[str] = option(None, "Data folder (default: the embedded demo set).")
    backbone: str = option("resnet18", "Registry name (resnet-tasks backbones).")
    weights: typing.Optional[str] = option("imagenet", "imagenet, torchvision:TAG, timm:NAME.TAG, a file, or none.")
    freeze_stages: int = option(0, "0 = train all; N = freeze stem + layer1…N; 4 = whole backbone.")
    norm: str = option("bn", "Backbone normalisation.", ("bn", "frozen_bn"))
    img_size: int = option(224, "Input size (classification/segmentation side; detection min side).")
    shots: typing.Optional[int] = option(None, "Few-shot: K training samples per class (seeded).")


def _is_optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def base_type(tp):
    """``Optional[int]`` → ``int``; lists keep their origin."""
    if _is_optional(tp):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _coerce(cls, f: dataclasses.Field, tp, value: Any) -> Any:
    if value is None:
        if _is_optional(tp):
            return None
        raise ConfigError(f"{f.name} may not be empty")
    bt = base_type(tp)
    origin = typing.get_origin(bt)
    if origin not in (list, tuple) and isinstance(value, (list, tuple)):
        # A flag shared with a task whose field is a list arrives as a list (YAML lists too).
        if len(value) != 1:
            raise ConfigError(f"{f.name} takes one value for this task, got {len(value)}: {list(value)}")
        value = value[0]
    try:
        if origin in (list, tuple):
            (item,) = set(typing.get_args(bt)) - {Ellipsis}
            items = [value] if isinstance(value, str) else list(value)
            if f.metadata.get("split_commas", True):  # "a,b" and a repeated flag mean the same
                items = [p for v in items for p in (v.split(",") if isinstance(v, str) else [v])]
            return [item(v) for v in items if not (isinstance(v, str) and not v.strip())]
        if bt is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if bt is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
            raise TypeError
        value = bt(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{f.name} must be {getattr(bt, '__name__', bt)}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def build(cls, values: Mapping[str, Any]):
    """Instantiate config dataclass ``cls`` from a dict; unknown keys and bad values raise."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
                          f"valid keys: {', '.join(known)}")
    return cls(**{k: _coerce(cls, known[k], hints[k], v) for k, v in values.items()})


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def split_values(values: Mapping[str, Any], task_cfg_cls) -> tuple[TrainConfig, Any]:
    """Route flat keys (YAML / CLI) to TrainConfig or the task's config; unknown keys raise."""
    train_keys, task_keys = field_names(TrainConfig), field_names(task_cfg_cls)
    unknown = [k for k in values if k not in train_keys | task_keys]
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))} for this task; valid keys: "
                          f"{', '.join(sorted(train_keys | task_keys))}")
    train = build(TrainConfig, {k: v for k, v in values.items() if k in train_keys})
    task = build(task_cfg_cls, {k: v for k, v in values.items() if k in task_keys})
    return train, task


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of key: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def to_flat_dict(*configs) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in configs:
        out.update(dataclasses.asdict(c))
    return out
