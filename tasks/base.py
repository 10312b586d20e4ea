"""The contract between the one training loop (``tasks.engine``) and a task.

A task supplies data, model, loss, metrics, visuals and inference; the engine owns devices,
AMP, optimisation, checkpoints, logging, resume and interruption. A task file should read
like smp's ``base/model.py``: pick the parts, wire them, done.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import TaskConfig
from .engine.runtime import Runtime


class Task(ABC):
    """One fine-tuning task. Subclasses set the class attributes and implement the abstract methods.

    Args:
        cfg: the task's typed config (a :class:`TaskConfig` subclass).
        seed: run seed (splits, few-shot sampling, demo data).
        run_dir: run folder; a task may write files there (few-shot subset, demo data, visuals).
    """

    name: ClassVar[str]
    primary_metric: ClassVar[str]  # key of evaluate()'s result; higher is better; picks `best.pt`
    # Under torchrun: True when evaluate() sums its counts over the processes (tasks.engine.distributed),
    # so that each evaluates a shard; otherwise rank 0 evaluates the whole set while the others wait.
    gathers_metrics: ClassVar[bool] = False

    def __init__(self, cfg: TaskConfig, seed: int = 0, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.seed = seed
        self.run_dir = Path(run_dir) if run_dir is not None else None

    # ---- data ----------------------------------------------------------------------------
    @abstractmethod
    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """Train and val datasets. Called before :meth:`build_model` (it may learn class names)."""

    def collate_fn(self):
        """Collate for DataLoaders; ``None`` means torch's default (detection returns lists)."""
        return None

    def sample_weights(self) -> list[float] | None:
        """Per training sample, its chance of being drawn (with replacement, seeded per epoch); ``None``:
        each sample once per epoch. Called after :meth:`prepare_training`."""
        return None

    # ---- model ---------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> nn.Module:
        """The full model; weights, freezing and head initialisation applied."""

    def backbone_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters that get the lower backbone LR (default: ``model.backbone``'s)."""
        bb = getattr(model, "backbone", None)
        return list(bb.parameters()) if bb is not None else []

    def prepare_training(self, model: nn.Module, train_ds: Dataset, val_ds: Dataset, rt: Runtime
                         ) -> tuple[nn.Module, Dataset, Dataset]:
        """Hook before the loop: return (module that takes batches, train set, val set).

        Default: unchanged. Classification swaps in a cached-feature head when the backbone is frozen.
        """
        return model, train_ds, val_ds

    def callbacks(self) -> list:
        """Engine callbacks this task adds to every run (e.g. a freeze schedule); see ``tasks.engine.callbacks``."""
        return []

    @abstractmethod
    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Named loss terms for one batch already on the device; the engine sums them."""

    # ---- evaluation ----------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader, rt: Runtime) -> dict[str, float]:
        """Metrics on ``loader`` (must contain :attr:`primary_metric`; ``val_loss`` if known)."""

    def save_visuals(self, model: nn.Module, loader: DataLoader, rt: Runtime, out_dir: Path,
                     epoch: int) -> None:
        """Write a few PNGs (overlays, confusion matrix…) for this epoch into ``out_dir``."""

    # ---- checkpoint and inference ----------------------------------------------------------
    @abstractmethod
    def checkpoint_meta(self) -> dict[str, Any]:
        """Everything inference needs beyond the config (class names, preprocessing…); plain types only."""

    @classmethod
    def from_checkpoint(cls, cfg: TaskConfig, meta: dict[str, Any], seed: int = 0) -> "Task":
        """Rebuild the task from a checkpoint (no data access). Default: ``cls(cfg)`` + :meth:`load_meta`."""
        task = cls(cfg, seed=seed)
        task.load_meta(meta)
        return task

    def load_meta(self, meta: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_meta` saved."""

    @abstractmethod
    def eval_dataset(self, data: str) -> Dataset:
        """Labelled dataset for ``resnet-tasks evaluate --data DIR`` (its val split, else all of it)."""

    @abstractmethod
    def predict(self, model: nn.Module, inputs: list[Path], out_dir: Path, rt: Runtime) -> list[dict]:
        """Run on image files, write outputs under ``out_dir``, return one record per image."""
