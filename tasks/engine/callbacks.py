"""The callback protocol of :func:`tasks.engine.fit`, and the small built-in callbacks.

A callback subclasses :class:`Callback` and overrides the hooks it needs; each hook gets the
:class:`~tasks.engine.trainer.Trainer` (model, optimiser, loaders, ``state``, ``run_dir``…).
Hooks run in list order, built-ins first::

    on_fit_start            after setup (and after loading the checkpoint when resuming)
    on_train_epoch_start    epoch (0-based) is about to train
    on_train_batch_end      after an optimiser step; ``losses`` holds the step's loss terms
    on_validation_end       after ``task.evaluate``; ``metrics`` as returned by it
    on_epoch_end            ``record`` (the epoch's row of the history) is in ``state["history"]``
    on_interrupt            the run stops early (signal or ``trainer.request_stop``) at a step boundary
    on_fit_end              every epoch has run (or early stopping ended the run)

``trainer.request_stop(reason)`` from any hook stops the run at the next step boundary, with a
resumable ``last.pt`` (that is how the tests interrupt a real run); ``trainer.finish_early(reason)``
in ``on_epoch_end`` ends it as finished. Under ``torchrun`` the callbacks that write files run on
rank 0 only; the task's, early stopping and those passed to ``fit`` run on every process.

>>> class PrintLoss(Callback):
...     def on_train_batch_end(self, trainer, losses):
...         print(round(sum(losses.values()), 3))
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import save_checkpoint, strip_training_state
from .runlog import write_history

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)


class Callback:
    """Base class: every hook does nothing."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_train_epoch_start(self, trainer: "Trainer", epoch: int) -> None: ...

    def on_train_batch_end(self, trainer: "Trainer", losses: dict[str, float]) -> None: ...

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None: ...

    def on_interrupt(self, trainer: "Trainer") -> None: ...

    def on_fit_end(self, trainer: "Trainer") -> None: ...


class History(Callback):
    """``metrics.jsonl``, ``metrics.csv`` (unless ``files`` is off: ``--logger none``) and ``curves.png``,
    rewritten from the history each epoch (rewritten, not appended, so they stay right after a resume)."""

    def __init__(self, files: bool = True) -> None:
        self.files = files

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        write_history(trainer.run_dir, trainer.state["history"], trainer.state["best_epoch"], files=self.files)


class Visuals(Callback):
    """The task's PNGs of the epoch (overlays, confusion matrix, predictions…) in ``visuals/``, drawn by
    the evaluated model; those of the best epoch also in ``visuals/best/``. ``files`` lists what this
    epoch wrote (the TensorBoard logger shows them)."""

    def __init__(self) -> None:
        self.files: list[Path] = []

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        out = trainer.run_dir / "visuals"
        before = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
        trainer.task.save_visuals(trainer.eval_model, trainer.visuals_loader, trainer.rt, out, record["epoch"])
        self.files = sorted(p for p in out.glob("*.png") if before.get(p) != p.stat().st_mtime_ns)
        if trainer.state["best_epoch"] == record["epoch"] and self.files:
            shutil.rmtree(out / "best", ignore_errors=True)
            (out / "best").mkdir()
            for p in self.files:
                shutil.copy2(p, out / "best" / p.name)


class EarlyStopping(Callback):
    """Finish the run once the primary metric has not risen by more than ``min_delta`` for ``patience``
    epochs. Read from the history alone, so a resumed run stops where the uninterrupted one would."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        key = trainer.task.primary_metric
        best, best_epoch = None, 0
        for r in trainer.state["history"]:
            if best is None or r[key] > best + self.min_delta:  # NaN never improves
                best, best_epoch = r[key], r["epoch"]
        if record["epoch"] - best_epoch >= self.patience and not trainer.finished:
            trainer.finish_early(f"{key} has not improved by more than {self.min_delta:g} for {self.patience} "
                                 f"epoch(s) (best {best:.4f} at epoch {best_epoch})")


class FreezeSchedule(Callback):
    """Unfreeze the whole backbone (``model.backbone``) from epoch ``after`` on (0-based)."""

    def __init__(self, after: int) -> None:
        self.after = after

    def on_train_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        backbone = trainer.model.backbone
        if epoch >= self.after and backbone.freeze_stages != 0:
            backbone.freeze(0)
            log.info("epoch %d: freeze schedule unfreezes the whole backbone", epoch + 1)


class Checkpointing(Callback):
    """``last.pt`` at the start, after every epoch and on interrupt; ``best.pt`` when the primary metric
    improves. ``last.pt`` of an unfinished run holds what ``--resume`` needs (optimiser, scheduler,
    every RNG); ``best.pt`` and a finished run's ``last.pt`` hold the model and its metadata only,
    unless ``save_optimizer``. Saves are atomic: a kill at any moment leaves the previous file."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        if not trainer.resumed:
            save_checkpoint(trainer.run_dir / "last.pt", trainer.checkpoint())  # resumable from the first step

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        payload = trainer.checkpoint()
        lean = payload if trainer.cfg.save_optimizer else strip_training_state(payload)
        save_checkpoint(trainer.run_dir / "last.pt", lean if trainer.finished else payload)
        if trainer.state["best_epoch"] == record["epoch"]:
            save_checkpoint(trainer.run_dir / "best.pt", lean)

    def on_interrupt(self, trainer: "Trainer") -> None:
        save_checkpoint(trainer.run_dir / "last.pt", trainer.checkpoint())
