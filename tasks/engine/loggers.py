"""Experiment logging: TensorBoard event files in the run folder, and the end-of-run summary."""
from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .callbacks import Callback, Visuals

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)


class TensorBoardLogger(Callback):
    """``events.out.tfevents.*`` in the run folder (``tensorboard --logdir runs``): the loss and the LR of
    every step (``step/…``), every number of the epoch's record (``epoch/…``, x = epoch) and the
    epoch's visuals as images (``visuals/…``). On resume, events past the checkpoint's step are dropped."""

    def __init__(self) -> None:
        self.writer = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(trainer.run_dir),
                                    purge_step=trainer.state["global_step"] if trainer.resumed else None)

    def on_train_batch_end(self, trainer: "Trainer", losses: dict[str, float]) -> None:
        step = trainer.state["global_step"]
        self.writer.add_scalar("step/loss", sum(losses.values()), step)
        if len(losses) > 1:
            for k, v in losses.items():
                self.writer.add_scalar(f"step/loss_{k}", v, step)
        self.writer.add_scalar("step/lr", trainer.optimizer.param_groups[-1]["lr"], step)

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        for k, v in record.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self.writer.add_scalar(f"epoch/{k}", v, epoch)
        from PIL import Image

        for cb in trainer.callbacks:
            for path in cb.files if isinstance(cb, Visuals) else []:
                tag = re.sub(r"epoch_?\d+", "epoch", path.stem)
                with Image.open(path) as im:
                    self.writer.add_image(f"visuals/{tag}", np.asarray(im.convert("RGB")), epoch, dataformats="HWC")
        self.writer.flush()

    def on_interrupt(self, trainer: "Trainer") -> None:
        self.writer.close()

    def on_fit_end(self, trainer: "Trainer") -> None:
        self.writer.close()


class RunSummary(Callback):
    """At the end: best epoch and its metrics, time, and where the files are, logged and in ``summary.json``."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.t0 = time.perf_counter()

    def on_fit_end(self, trainer: "Trainer") -> None:
        s, run = trainer.state, trainer.run_dir
        best = next((r for r in s["history"] if r["epoch"] == s["best_epoch"]), {})
        files = {name: str(run / name) for name in ("best.pt", "last.pt", "metrics.csv", "curves.png")
                 if (run / name).exists()}
        if any(run.glob("events.out.tfevents.*")):
            files["tensorboard"] = f"tensorboard --logdir {run}"
        if (run / "visuals" / "best").is_dir():
            files["visuals_best"] = str(run / "visuals" / "best")
        summary = {"task": trainer.task.name, "primary_metric": trainer.task.primary_metric,
                   "best_epoch": s["best_epoch"], "best_metrics": {k: v for k, v in best.items() if k != "epoch"},
                   "epochs_run": s["epoch"], "epochs": trainer.epochs, "stopped_early": s["stopped_early"],
                   "processes": trainer.env.world, "ema": trainer.ema is not None,
                   "train_time_s": round(sum(r.get("time_s", 0.0) for r in s["history"]), 1),
                   "wall_time_s": round(time.perf_counter() - self.t0, 1), "files": files}
        (run / "summary.json").write_text(json.dumps(summary, indent=1))
        shown = "  ".join(f"{k} {v:.4f}" for k, v in summary["best_metrics"].items()
                          if isinstance(v, float) and "/" not in k and k not in ("lr", "time_s"))
        early = f", stopped early after epoch {s['stopped_early']}" if s["stopped_early"] else ""
        log.info("summary: best epoch %s of %d%s: %s", s["best_epoch"], s["epoch"], early, shown)
        log.info("summary: %.1f s training (all epochs, this run and any it resumed), %.1f s this session",
                 summary["train_time_s"], summary["wall_time_s"])
        for k, v in files.items():
            log.info("summary: %-13s %s", k, v)
