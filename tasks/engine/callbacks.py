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
    on_fit_end              every epoch has run

``trainer.request_stop(reason)`` from any hook stops the run at the next step boundary, with a
resumable ``last.pt`` (that is how the tests interrupt a real run).

>>> class PrintLoss(Callback):
...     def on_train_batch_end(self, trainer, losses):
...         print(round(sum(losses.values()), 3))
"""
from __future__ import annotations

import logging
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
    """``metrics.jsonl``, ``metrics.csv`` and ``curves.png``, rewritten from the history each epoch
    (rewritten, not appended, so they stay right after a resume)."""

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        write_history(trainer.run_dir, trainer.state["history"])


class Visuals(Callback):
    """The task's PNGs for the epoch (overlays, confusion matrix…) in ``visuals/``."""

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        trainer.task.save_visuals(trainer.step_model, trainer.val_loader, trainer.rt, trainer.run_dir / "visuals",
                                  record["epoch"])


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
        finished = trainer.state["epoch"] >= trainer.epochs
        save_checkpoint(trainer.run_dir / "last.pt", lean if finished else payload)
        if trainer.state["best_epoch"] == record["epoch"]:
            save_checkpoint(trainer.run_dir / "best.pt", lean)

    def on_interrupt(self, trainer: "Trainer") -> None:
        save_checkpoint(trainer.run_dir / "last.pt", trainer.checkpoint())
