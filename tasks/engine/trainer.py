"""The one training loop. Tasks supply data, model, loss and metrics (:class:`tasks.base.Task`);
checkpoints, history, visuals, progress and freeze schedules are callbacks (``callbacks.py``)."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml

from resnet_backbones.errors import UserError

from ..base import Task
from ..config import TrainConfig
from .batching import EpochBatchSampler, SeededSamples, loader_seed, make_loader
from .callbacks import Callback, Checkpointing, History, Visuals
from .checkpoint import load_checkpoint
from .optim import build_optimizer, build_scheduler, param_groups, warmup_steps
from .progress import Progress
from .rundir import RunDir, fresh_run_dir
from .rng import capture_rng, restore_rng, seed_everything
from .runtime import Runtime
from .signals import StopFlag, stop_on_signals

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """The run stopped early (Ctrl-C, SIGTERM, ``request_stop``); a resumable checkpoint has been written."""

    def __init__(self, checkpoint: Path, reason: str) -> None:
        super().__init__(f"interrupted ({reason}); checkpoint saved to {checkpoint}; continue with "
                         f"--resume {checkpoint.parent}")
        self.checkpoint = checkpoint


class Trainer:
    """What one run of :func:`fit` holds; callbacks receive it and may read or change any of it.

    ``state`` (saved in every checkpoint): ``epoch`` (epochs done), ``step_in_epoch``, ``global_step``,
    ``loss_sum`` (this epoch's), ``best_metric``, ``best_epoch`` and ``history`` (one record per epoch).
    """

    def __init__(self, task: Task, cfg: TrainConfig, rt: Runtime, run_dir: Path, callbacks: list[Callback],
                 notes: dict[str, Any] | None = None) -> None:
        self.task, self.cfg, self.rt, self.run_dir, self.notes = task, cfg, rt, run_dir, notes or {}
        self.callbacks = callbacks
        self.stop = StopFlag()
        self.resumed, self.rng = False, None
        self.state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "loss_sum": 0.0,
                                      "best_metric": None, "best_epoch": None, "history": []}

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop at the next step boundary with a resumable ``last.pt`` (raises :class:`TrainingInterrupted`)."""
        self.stop.set(reason)

    def call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ---- setup ---------------------------------------------------------------------------------
    def setup(self, ckpt: dict[str, Any] | None) -> None:
        task, cfg, rt = self.task, self.cfg, self.rt
        seed_everything(cfg.seed)
        train_ds, val_ds = task.build_datasets()
        if len(train_ds) == 0 or len(val_ds) == 0:
            raise UserError(f"empty {'training' if len(train_ds) == 0 else 'validation'} set; check --data")
        self.model = rt.prepare_model(task.build_model())
        self.step_model, train_ds, val_ds = task.prepare_training(self.model, train_ds, val_ds, rt)
        self.trains = any(p.requires_grad for p in (*self.model.parameters(), *self.step_model.parameters()))
        self.epochs = cfg.epochs if self.trains else 1
        self.batches = EpochBatchSampler(len(train_ds), cfg.batch_size, cfg.seed)
        self.steps_per_epoch = self.batches.steps_per_epoch
        pin, collate = rt.device.type == "cuda", task.collate_fn()
        self.train_loader = make_loader(SeededSamples(train_ds, cfg.seed), cfg.batch_size, cfg.workers, pin,
                                        collate, batch_sampler=self.batches)
        self.val_loader = make_loader(val_ds, cfg.batch_size, cfg.workers, pin, collate)
        self.optimizer = build_optimizer(param_groups(self.step_model, task.backbone_parameters(self.model), cfg),
                                         cfg)
        total = self.epochs * self.steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, total, warmup_steps(cfg.warmup_epochs,
                                                                             self.steps_per_epoch, total))
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.needs_grad_scaler)
        if ckpt is not None:
            self.load(ckpt)

    def load(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.state.update(ckpt["state"])
        self.resumed = True
        if "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            self.rng = ckpt.get("rng")  # absent in checkpoints of earlier versions: resumed, not bit-exact
        elif self.state["epoch"] < self.epochs:
            raise UserError(f"{ckpt['path']} holds no optimiser state, so the run cannot continue exactly; "
                            "resume from the run folder's last.pt")
        log.info("resuming %s at epoch %d, step %d", ckpt["path"], self.state["epoch"] + 1,
                 self.state["step_in_epoch"])

    def checkpoint(self) -> dict[str, Any]:
        """Everything to continue exactly: model, optimiser, scheduler, scaler, loop state, every RNG."""
        return {"task": self.task.name, "task_config": dataclasses.asdict(self.task.cfg),
                "train_config": dataclasses.asdict(self.cfg), "task_meta": self.task.checkpoint_meta(),
                "notes": self.notes, "model": self.model.state_dict(), "state": dict(self.state),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "rng": capture_rng(), "loader_seed": loader_seed(self.cfg.seed, self.state["epoch"])}

    # ---- the loop --------------------------------------------------------------------------------
    def loop(self) -> None:
        """Train ``epochs`` epochs: steps, then validation; stop only at a step boundary."""
        if self.rng is not None:
            restore_rng(self.rng)  # the RNG streams exactly as they were when the checkpoint was taken
        for epoch in range(self.state["epoch"], self.epochs):
            self.epoch_start = time.perf_counter()
            self.call("on_train_epoch_start", epoch)
            if self.trains:
                self.step_model.train()
                for batch in self.epoch_batches(epoch):
                    losses = self.train_step(batch)
                    self.call("on_train_batch_end", losses)
                    if self.stop:
                        break
            if self.stop:
                break
            self.step_model.eval()
            metrics = self.task.evaluate(self.step_model, self.val_loader, self.rt)
            self.call("on_validation_end", metrics)
            self.call("on_epoch_end", self.end_epoch(metrics))
            if self.stop:
                break
        if self.stop and self.state["epoch"] < self.epochs:  # a stop during the last validation just finishes
            self.call("on_interrupt")
            raise TrainingInterrupted(self.run_dir / "last.pt", self.stop.reason)
        self.call("on_fit_end")

    def epoch_batches(self, epoch: int) -> Iterable[Any]:
        """The epoch's batches not trained yet (all of them unless resuming mid-epoch)."""
        self.batches.set_epoch(epoch, skip=self.state["step_in_epoch"])
        self.train_loader.dataset.set_epoch(epoch)
        self.train_loader.generator.manual_seed(loader_seed(self.cfg.seed, epoch))
        return self.train_loader

    def train_step(self, batch: Any) -> dict[str, float]:
        """Forward, backward, optimiser and scheduler step on one batch; returns the loss terms."""
        batch = self.rt.to_device(batch)
        with self.rt.autocast():
            try:
                losses = self.task.training_step(self.step_model, batch)
            except ValueError as e:
                if "Expected more than 1 value per channel" not in str(e):
                    raise
                raise UserError(f"a batch of one sample reaches 1x1 feature maps, where BatchNorm cannot train; "
                                f"use --batch-size 2 or more (now {self.cfg.batch_size}) or a larger "
                                "--img-size") from None
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise UserError(f"loss became {loss.item()} at epoch {self.state['epoch'] + 1}, step "
                            f"{self.state['step_in_epoch'] + 1}; lower --lr or set --grad-clip")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.step_model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        s = self.state
        s["step_in_epoch"], s["global_step"], s["loss_sum"] = (s["step_in_epoch"] + 1, s["global_step"] + 1,
                                                               s["loss_sum"] + loss.item())
        return {k: v.item() for k, v in losses.items()}

    def end_epoch(self, metrics: dict[str, float]) -> dict[str, Any]:
        """Append the epoch's record to the history, update the best metric, reset the epoch counters."""
        s = self.state
        record: dict[str, Any] = {"epoch": s["epoch"] + 1}
        if self.trains:
            record["train_loss"] = s["loss_sum"] / max(1, s["step_in_epoch"])
        record.update({k: float(v) for k, v in metrics.items()})
        record.update(lr=self.optimizer.param_groups[-1]["lr"], time_s=round(time.perf_counter() - self.epoch_start, 2))
        s["history"].append(record)
        primary = float(metrics[self.task.primary_metric])
        if s["best_metric"] is None or primary > s["best_metric"]:
            s["best_metric"], s["best_epoch"] = primary, record["epoch"]
        s.update(epoch=s["epoch"] + 1, step_in_epoch=0, loss_sum=0.0)
        return record

    def summary(self) -> dict[str, Any]:
        s = self.state
        return {"run_dir": str(self.run_dir), "best_metric": s["best_metric"], "best_epoch": s["best_epoch"],
                "primary_metric": self.task.primary_metric, "history": s["history"]}


def default_callbacks(task: Task) -> list[Callback]:
    return [*task.callbacks(), History(), Visuals(), Progress()]


def fit(task: Task, cfg: TrainConfig, callbacks: Iterable[Callback] = (), *, run_dir: str | Path | None = None,
        resume: str | Path | None = None, overwrite: bool = False, notes: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    """Train ``task`` with ``cfg`` into a run folder; returns a summary (best metric, history…).

    Args:
        callbacks: extra :class:`~tasks.engine.callbacks.Callback` objects, run after the built-in
            history, visuals and progress ones and before checkpointing.
        run_dir: the run folder (default ``cfg.out``, else the task's, else a fresh ``runs/<task>-<time>``);
            a folder that already holds a run is refused unless ``resume`` or ``overwrite``.
        resume: a run folder or checkpoint to continue exactly (same weights, optimiser, RNGs, batches).
        notes: plain data stored in the checkpoints (e.g. why the weights fell back to random).
    """
    if isinstance(callbacks, (str, Path)):
        raise TypeError("fit(task, cfg, callbacks=…): pass the run folder as run_dir=… (or cfg.out)")
    rt = Runtime.create(cfg.device, cfg.amp, cfg.channels_last)
    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        run_dir = Path(ckpt["path"]).parent
    run_dir = Path(run_dir or cfg.out or task.run_dir or fresh_run_dir(task.name))
    folder = RunDir(run_dir, resume=ckpt is not None, overwrite=overwrite)
    cfg.out, task.run_dir = str(run_dir), run_dir
    trainer = Trainer(task, cfg, rt, run_dir, [*default_callbacks(task), *callbacks, Checkpointing()], notes)
    with folder.claim():
        log.info("run folder: %s", run_dir)
        trainer.setup(ckpt)
        resolved = {"task": task.name, **dataclasses.asdict(cfg), **dataclasses.asdict(task.cfg)}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        with stop_on_signals(trainer.stop):
            trainer.call("on_fit_start")
            folder.started = True
            trainer.loop()
    return trainer.summary()
