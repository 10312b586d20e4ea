"""Progress: a bar on a terminal; under nohup/CI plain log lines every ``log_every`` steps."""
from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .callbacks import Callback

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)


class Progress(Callback):
    """Step progress (loss, LR, seconds per step, ETA of the training steps) and one line per epoch.

    Args:
        tty: draw a bar (default: when stderr is a terminal); else log a line every ``cfg.log_every`` steps.
    """

    def __init__(self, tty: bool | None = None) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar: tqdm | None = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.t0, self.step0 = time.perf_counter(), trainer.state["global_step"]

    def on_train_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        if self.tty:
            self.bar = tqdm(total=trainer.steps_per_epoch, initial=trainer.state["step_in_epoch"], leave=False,
                            desc=f"epoch {epoch + 1}/{trainer.epochs}", dynamic_ncols=True)

    def on_train_batch_end(self, trainer: "Trainer", losses: dict[str, float]) -> None:
        s = trainer.state
        loss, lr = s["loss_sum"] / max(1, s["samples"]), trainer.optimizer.param_groups[-1]["lr"]
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        elif s["step_in_epoch"] % trainer.cfg.log_every == 0 or s["step_in_epoch"] == trainer.steps_per_epoch:
            per_step = (time.perf_counter() - self.t0) / (s["global_step"] - self.step0)
            left = trainer.epochs * trainer.steps_per_epoch - s["global_step"]
            log.info("epoch %d/%d step %d/%d  loss %.4f  lr %.2e  %.2f s/step  ETA %s", s["epoch"] + 1,
                     trainer.epochs, s["step_in_epoch"], trainer.steps_per_epoch, loss, lr, per_step,
                     datetime.timedelta(seconds=round(per_step * left)))

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        self._close()

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                          if k != "lr")
        log.info("%s%s", shown, "  (best)" if trainer.state["best_epoch"] == record["epoch"] else "")

    def on_interrupt(self, trainer: "Trainer") -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
