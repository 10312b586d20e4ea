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


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, *, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None):
    """A config field: ``help`` becomes the CLI flag's help; ``choices`` and the bounds (``ge`` ≥,
    ``gt`` >, ``le`` ≤, ``lt`` <) are declared here once and checked for CLI, YAML and Python alike."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds})


_BOUND_OPS = {"ge": (">=", float.__ge__), "gt": (">", float.__gt__), "le": ("<=", float.__le__),
              "lt": ("<", float.__lt__)}


def range_text(f: dataclasses.Field) -> str:
    """``'>= 1'``, ``'in 0…4'``, ``'> 0 and < 1'``… for help texts and errors; '' when unbounded."""
    bounds = f.metadata.get("bounds", {})
    if set(bounds) == {"ge", "le"}:
        return f"in {bounds['ge']:g}…{bounds['le']:g}"
    return " and ".join(f"{_BOUND_OPS[k][0]} {v:g}" for k, v in f.metadata.get("bounds", {}).items())


def check_value(f: dataclasses.Field, value: Any) -> None:
    """Raise :class:`ConfigError` when ``value`` breaks the field's declared choices or bounds."""
    if value is None:
        return
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
    bounds = f.metadata.get("bounds") or {}
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        for key, bound in bounds.items():
            if not _BOUND_OPS[key][1](float(item), float(bound)):
                raise ConfigError(f"{f.name} must be {range_text(f)}, got {value!r}")


class Checked:
    """Dataclass mixin: every field's choices and bounds are checked on construction."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))


@dataclass
class TrainConfig(Checked):
    """Engine settings shared by every task."""

    epochs: int = option(10, "Training epochs.", ge=1)
    batch_size: int = option(16, "Images per batch and process (a last batch of one is merged into the one "
                             "before); under torchrun the global batch is this × processes × accumulate.", ge=1)
    accumulate: int = option(1, "Gradient accumulation: one optimiser step per this many batches, each loss "
                             "weighted by its share of the samples (= a K× larger batch, BatchNorm aside).", ge=1)
    lr: float = option(1e-3, "Peak learning rate of the head; the backbone gets lr × backbone_lr_mult.", gt=0)
    backbone_lr_mult: float = option(0.1, "Backbone LR as a fraction of the head LR (default 1 with random "
                                     "weights).", ge=0)
    optimizer: str = option("adamw", "Optimiser.", ("adamw", "sgd"))
    weight_decay: float = option(0.01, "Weight decay (never applied to norm layers or biases).", ge=0)
    warmup_epochs: float = option(1.0, "Linear warmup length in epochs (at most a fifth of the run), then "
                                  "the lr_scheduler.", ge=0)
    lr_scheduler: str = option("cosine", "LR schedule after the warmup, per step: cosine (decay to 0) or step "
                               "(× lr_gamma every lr_step_size epochs, torchvision's StepLR).", ("cosine", "step"))
    lr_step_size: int = option(30, "With lr_scheduler step: epochs between LR decays.", ge=1)
    lr_gamma: float = option(0.1, "With lr_scheduler step: LR factor at each decay.", gt=0, le=1)
    grad_clip: float = option(0.0, "Clip the gradient norm to this value (0 = off).", ge=0)
    ema_decay: float = option(0.0, "Keep an exponential moving average of the weights (timm ModelEmaV3) with "
                              "this decay, e.g. 0.999; it is evaluated, picked as best and saved as model_ema, "
                              "which evaluate/predict use (0 = off).", ge=0, lt=1)
    patience: typing.Optional[int] = option(None, "Early stopping: finish once the primary metric has not risen "
                                            "by more than --min-delta for this many epochs.", ge=1)
    min_delta: float = option(0.0, "Early stopping: the smallest rise of the primary metric that counts.", ge=0)
    sync_bn: bool = option(False, "Under torchrun on CUDA: BatchNorm statistics over all processes "
                           "(SyncBatchNorm; frozen stages and frozen_bn untouched).")
    logger: str = option("tensorboard", "Metric logs in the run folder: tensorboard (event files, plus "
                         "metrics.csv/jsonl), csv (metrics.csv/jsonl), none.", ("tensorboard", "csv", "none"))
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    amp: typing.Optional[bool] = option(None, "Mixed precision (bf16, else fp16); default: on for CUDA.")
    channels_last: bool = option(True, "channels_last memory format on CUDA.")
    seed: int = option(0, "Seed for data order, few-shot sampling, splits and initialisation.", ge=0)
    workers: int = option(2, "DataLoader worker processes.", ge=0)
    out: typing.Optional[str] = option(None, "Run folder (default: a fresh runs/<task>-<time>).")
    save_optimizer: bool = option(False, "Keep the optimiser state in best.pt and in a finished run's last.pt "
                                  "(an unfinished run's last.pt always keeps it, for --resume).")
    log_every: int = option(20, "Without a terminal: log a progress line every this many steps.", ge=1)


@dataclass
class TaskConfig(Checked):
    """Settings every task has; each task subclasses it with its own fields."""

    data: typing.Optional[str] = option(None, "Data folder (default: the embedded demo set).")
    backbone: str = option("resnet18", "Registry name (resnet-tasks backbones).")
    weights: typing.Optional[str] = option("imagenet", "imagenet, torchvision:TAG, timm:NAME.TAG, a file, or none.")
    freeze_stages: int = option(0, "0 = train all; N = freeze stem + layer1…N; 4 = whole backbone.", ge=0, le=4)
    norm: str = option("bn", "Backbone normalisation.", ("bn", "frozen_bn"))
    img_size: int = option(224, "Input size (classification/segmentation side; detection min side).", ge=16)
    shots: typing.Optional[int] = option(None, "Few-shot: K training samples per class (seeded).", ge=1)

    def data_folders(self) -> list[str]:
        """The folders ``data`` names, checked before a run writes anything."""
        return [self.data] if isinstance(self.data, str) else list(self.data or [])

    def __post_init__(self) -> None:
        if isinstance(self.weights, str) and self.weights.lower() in ("none", "random", ""):
            self.weights = None  # one spelling of "random init", so checks like `weights is None` hold
        super().__post_init__()


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
    check_value(f, value)
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


PRESETS = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    """Bundled presets (``tasks/presets/*.yaml``), usable as ``--config NAME``."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def is_preset(path: Path) -> bool:
    return path.resolve().parent == PRESETS.resolve()


def find_config(name_or_path: str | Path) -> Path:
    """A YAML file, or the bundled preset of that name (``classification`` → ``presets/classification.yaml``).

    ``configs/NAME.yaml`` also names a preset from any folder: the repository's ``configs`` is a link
    to ``tasks/presets`` (one copy of each file, shipped inside the package).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    preset = PRESETS / f"{path.stem if path.suffix in ('.yaml', '.yml') else path.name}.yaml"
    if path.parent in (Path("."), Path("configs")) and preset.is_file():
        return preset
    raise ConfigError(f"config {name_or_path} not found: pass a YAML file or a bundled preset "
                      f"({', '.join(preset_names())})")


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
