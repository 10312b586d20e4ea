"""The one training loop. Tasks supply data, model, loss and metrics (:class:`tasks.base.Task`);
checkpoints, history, visuals, progress and freeze schedules are callbacks (``callbacks.py``)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import yaml

from resnet_backbones.errors import UserError

from ..base import Task
from ..config import TrainConfig
from . import distributed as ddp
from .batching import EpochBatchSampler, SeededSamples, Shard, loader_seed, make_loader
from .callbacks import Callback, Checkpointing, EarlyStopping, History, Visuals
from .checkpoint import load_checkpoint
from .distributed import DistEnv
from .loggers import RunSummary, TensorBoardLogger
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

    ``state`` (saved in every checkpoint): ``epoch`` (epochs done), ``step_in_epoch`` (optimiser steps),
    ``global_step``, ``loss_sum`` and ``samples`` (this epoch's, over all processes), ``best_metric``,
    ``best_epoch``, ``history`` (one record per epoch) and ``stopped_early`` (the epoch early stopping
    ended the run at).
    """

    def __init__(self, task: Task, cfg: TrainConfig, rt: Runtime, run_dir: Path, callbacks: list[Callback],
                 notes: dict[str, Any] | None = None, env: DistEnv = DistEnv()) -> None:
        self.task, self.cfg, self.rt, self.run_dir, self.notes, self.env = task, cfg, rt, run_dir, notes or {}, env
        self.callbacks = callbacks
        self.stop = StopFlag()
        self.resumed, self.rng, self.rng_ranks, self.ema = False, None, None, None
        self.state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "loss_sum": 0.0,
                                      "samples": 0, "best_metric": None, "best_epoch": None, "history": [],
                                      "stopped_early": None}

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop at the next step boundary with a resumable ``last.pt`` (raises :class:`TrainingInterrupted`)."""
        self.stop.set(reason)

    def finish_early(self, reason: str) -> None:
        """End the run, finished, after this epoch (early stopping); unlike :meth:`request_stop` there is
        nothing to resume."""
        self.state["stopped_early"] = self.state["epoch"]
        log.info("stopping early after epoch %d: %s", self.state["epoch"], reason)

    def call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model that is evaluated, picked as best and drawn: the EMA weights when ``ema_decay``."""
        return self.ema.module if self.ema is not None else self.step_model

    @property
    def finished(self) -> bool:
        return self.state["epoch"] >= self.epochs or self.state["stopped_early"] is not None

    # ---- setup ---------------------------------------------------------------------------------
    def setup(self, ckpt: dict[str, Any] | None) -> None:
        task, cfg, rt, env = self.task, self.cfg, self.rt, self.env
        seed_everything(cfg.seed)
        for turn in (True, False):  # rank 0 first: it may write the demo set the others then read
            if env.main == turn:
                train_ds, val_ds = task.build_datasets()
            ddp.barrier()
        if len(train_ds) == 0 or len(val_ds) == 0:
            raise UserError(f"empty {'training' if len(train_ds) == 0 else 'validation'} set; check --data")
        self.model = rt.prepare_model(task.build_model())
        self.step_model, train_ds, val_ds = task.prepare_training(self.model, train_ds, val_ds, rt)
        self.trains = any(p.requires_grad for p in (*self.model.parameters(), *self.step_model.parameters()))
        self.epochs = cfg.epochs if self.trains else 1
        if cfg.sync_bn and env.distributed:
            ddp.check_sync_bn(rt.device, env)
            log.info("--sync-bn: %d BatchNorm layers synchronised", ddp.sync_batchnorm(self.model))
        self.batches = EpochBatchSampler(len(train_ds), cfg.batch_size, cfg.seed, cfg.accumulate, env.world, env.rank,
                                         task.sample_weights())
        self.steps_per_epoch = self.batches.steps_per_epoch
        pin, collate = rt.device.type == "cuda", task.collate_fn()
        self.train_loader = make_loader(SeededSamples(train_ds, cfg.seed), cfg.batch_size, cfg.workers, pin,
                                        collate, batch_sampler=self.batches)
        # A task that gathers its metrics over the processes evaluates a shard on each; any other is
        # evaluated by rank 0 on the whole set while the others wait.
        self.gathers = env.distributed and task.gathers_metrics
        self.visuals_loader = make_loader(val_ds, cfg.batch_size, cfg.workers, pin, collate)
        self.val_loader = (make_loader(val_ds, cfg.batch_size, cfg.workers, pin, collate,
                                       sampler=Shard(len(val_ds), env.world, env.rank))
                           if self.gathers else self.visuals_loader)
        self.optimizer = build_optimizer(param_groups(self.step_model, task.backbone_parameters(self.model), cfg),
                                         cfg)
        total = self.epochs * self.steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, total,
                                         warmup_steps(cfg.warmup_epochs, self.steps_per_epoch, total),
                                         cfg.lr_scheduler, cfg.lr_step_size * self.steps_per_epoch, cfg.lr_gamma)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.needs_grad_scaler)
        if cfg.ema_decay > 0 and self.trains:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.step_model, decay=cfg.ema_decay)
        self.wrapped_params: set[int] = set()
        self.train_module = self.step_model
        if ckpt is not None:
            self.load(ckpt)

    def load(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["model_ema"])
        self.state.update(ckpt["state"])
        self.resumed = True
        world = ckpt.get("world", 1)
        if world != self.env.world and not self.finished:
            raise UserError(f"{ckpt['path']} was written by a run of {world} process(es); resume it with "
                            f"{world} (torchrun --nproc-per-node {world}) to continue exactly")
        if "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            ranks = ckpt.get("rng_ranks") or []
            # absent in checkpoints of earlier versions: resumed, not bit-exact
            self.rng = ranks[self.env.rank] if len(ranks) == self.env.world else ckpt.get("rng")
        elif not self.finished:
            raise UserError(f"{ckpt['path']} holds no optimiser state, so the run cannot continue exactly; "
                            "resume from the run folder's last.pt")
        log.info("resuming %s at epoch %d, step %d", ckpt["path"], self.state["epoch"] + 1,
                 self.state["step_in_epoch"])

    def share_rng(self) -> None:
        """Collect every process's RNG states (a collective: all ranks call it before a checkpoint hook)."""
        if self.env.distributed:
            self.rng_ranks = ddp.gather_objects(capture_rng())

    def checkpoint(self) -> dict[str, Any]:
        """Everything to continue exactly: model (and EMA), optimiser, scheduler, scaler, loop state, every
        RNG (of every process)."""
        rng = capture_rng()
        return {"task": self.task.name, "task_config": dataclasses.asdict(self.task.cfg),
                "train_config": dataclasses.asdict(self.cfg), "task_meta": self.task.checkpoint_meta(),
                "notes": self.notes, "model": self.model.state_dict(),
                "model_ema": self.ema.module.state_dict() if self.ema is not None else None,
                "state": dict(self.state), "world": self.env.world,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "rng": rng, "rng_ranks": self.rng_ranks if self.env.distributed else [rng],
                "loader_seed": loader_seed(self.cfg.seed, self.state["epoch"])}

    # ---- the loop --------------------------------------------------------------------------------
    def loop(self) -> None:
        """Train ``epochs`` epochs: steps, then validation; stop only at a step boundary."""
        if self.rng is not None:
            restore_rng(self.rng)  # the RNG streams exactly as they were when the checkpoint was taken
        for epoch in range(self.state["epoch"], self.epochs):
            if self.state["stopped_early"] is not None:
                break
            self.epoch_start = time.perf_counter()
            self.call("on_train_epoch_start", epoch)
            if self.trains:
                self.wrap()
                self.train_module.train()
                try:
                    for counts, total in self.epoch_steps(epoch):
                        losses = self.train_step(counts, total)
                        self.call("on_train_batch_end", losses)
                        if self.should_stop():
                            break
                finally:
                    # dropped now, not when a traceback holding this frame is collected: a stop mid-epoch
                    # must end the loader's workers (they ignore SIGTERM; left alive, exit would hang)
                    self.batch_iter = None
            if self.stop:
                break
            metrics = self.validate()
            self.call("on_validation_end", metrics)
            record = self.end_epoch(metrics)
            self.share_rng()
            self.call("on_epoch_end", record)
            if self.should_stop() or self.state["stopped_early"] is not None:
                break
        if self.stop and self.state["epoch"] < self.epochs:  # a stop during the last validation just finishes
            self.share_rng()
            self.call("on_interrupt")
            raise TrainingInterrupted(self.run_dir / "last.pt", self.stop.reason)
        self.call("on_fit_end")

    def should_stop(self) -> bool:
        """The stop flag, agreed by every process (a signal may reach only one of them)."""
        if self.env.distributed and ddp.all_reduce_sum([float(bool(self.stop))])[0] and not self.stop:
            self.stop.set("stopped by another process")
        return bool(self.stop)

    def wrap(self) -> None:
        """DistributedDataParallel around the trained module, again when a freeze schedule changed what
        trains (DDP reduces the gradients of the parameters that trained when it was built)."""
        trainable = {id(p) for p in self.step_model.parameters() if p.requires_grad}
        if self.env.distributed and trainable != self.wrapped_params:
            self.train_module, self.wrapped_params = ddp.wrap(self.step_model, self.rt.device), trainable

    def epoch_steps(self, epoch: int) -> Iterator[tuple[list[int], int]]:
        """The epoch's steps not trained yet: (this process's batch sizes, samples in the step over all
        processes); :attr:`batch_iter` yields the batches."""
        skip = self.state["step_in_epoch"]
        self.batches.set_epoch(epoch, skip=skip)
        self.train_loader.dataset.set_epoch(epoch)
        self.train_loader.generator.manual_seed(loader_seed(self.cfg.seed, epoch))
        self.batch_iter = iter(self.train_loader)
        for step, total in zip(self.batches.steps()[skip:], self.batches.step_sizes()[skip:]):
            yield [len(b) for b in step], total

    def train_step(self, counts: list[int], total: int) -> dict[str, float]:
        """One optimiser step over this process's ``counts`` batches: each loss is weighted by its share
        of the step's ``total`` samples, so K accumulated batches (or N processes) give the gradient of
        one K×N larger batch. Returns the loss terms (mean over this process's samples)."""
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for i, n in enumerate(counts):
            batch = self.rt.to_device(next(self.batch_iter))
            last = i == len(counts) - 1  # DDP reduces the gradients once, after the step's last batch
            with contextlib.nullcontext() if last or self.train_module is self.step_model \
                    else self.train_module.no_sync():
                losses = self.forward(batch)
                self.scaler.scale(sum(losses.values()) * (n * self.env.world / total)).backward()
            # One device sync per batch, after backward is queued (a check before backward would stall the
            # CPU until the forward pass ends on a GPU, with nothing queued behind it); a non-finite loss
            # still stops the run before the optimiser step.
            values = torch.stack([v.detach().float() for v in losses.values()]).tolist()
            if not math.isfinite(sum(values)):
                raise UserError(f"loss became {sum(values)} at epoch {self.state['epoch'] + 1}, step "
                                f"{self.state['step_in_epoch'] + 1}; lower --lr or set --grad-clip")
            for k, v in zip(losses, values):
                sums[k] = sums.get(k, 0.0) + v * n
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.step_model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        s = self.state
        s["step_in_epoch"], s["global_step"] = s["step_in_epoch"] + 1, s["global_step"] + 1
        if self.ema is not None:
            self.ema.update(self.step_model, step=s["global_step"])
        loss_sum, samples = ddp.all_reduce_sum([sum(sums.values()), float(sum(counts))])
        s["loss_sum"], s["samples"] = s["loss_sum"] + loss_sum, s["samples"] + int(samples)
        return {k: v / sum(counts) for k, v in sums.items()}

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        with self.rt.autocast():
            try:
                return self.task.training_step(self.train_module, batch)
            except ValueError as e:
                if "Expected more than 1 value per channel" not in str(e):
                    raise
                raise UserError(f"a batch of one sample reaches 1x1 feature maps, where BatchNorm cannot train; "
                                f"use --batch-size 2 or more (now {self.cfg.batch_size}) or a larger "
                                "--img-size") from None

    def validate(self) -> dict[str, float]:
        """The task's metrics of :attr:`eval_model`; with EMA, the raw weights' primary metric and loss
        as ``raw/<name>`` too (as timm's train.py reports both)."""
        raw = self.evaluate(self.step_model) if self.ema is not None else {}
        metrics = self.evaluate(self.eval_model)
        metrics.update({f"raw/{k}": v for k, v in raw.items() if k in (self.task.primary_metric, "val_loss")})
        return metrics

    def evaluate(self, module: torch.nn.Module) -> dict[str, float]:
        module.eval()
        if not self.env.distributed or self.gathers:
            ddp.broadcast_buffers(module)
            return self.task.evaluate(module, self.val_loader, self.rt)
        metrics = self.task.evaluate(module, self.val_loader, self.rt) if self.env.main else None
        return ddp.broadcast_object(metrics)

    def end_epoch(self, metrics: dict[str, float]) -> dict[str, Any]:
        """Append the epoch's record to the history, update the best metric, reset the epoch counters."""
        s = self.state
        record: dict[str, Any] = {"epoch": s["epoch"] + 1}
        if self.trains:
            record["train_loss"] = s["loss_sum"] / max(1, s["samples"])
        record.update({k: float(v) for k, v in metrics.items()})
        record.update(lr=self.optimizer.param_groups[-1]["lr"], time_s=round(time.perf_counter() - self.epoch_start, 2))
        s["history"].append(record)
        primary = float(metrics[self.task.primary_metric])
        if s["best_metric"] is None or primary > s["best_metric"]:
            s["best_metric"], s["best_epoch"] = primary, record["epoch"]
        s.update(epoch=s["epoch"] + 1, step_in_epoch=0, loss_sum=0.0, samples=0)
        return record

    def summary(self) -> dict[str, Any]:
        s = self.state
        return {"run_dir": str(self.run_dir), "best_metric": s["best_metric"], "best_epoch": s["best_epoch"],
                "primary_metric": self.task.primary_metric, "stopped_early": s["stopped_early"],
                "history": s["history"]}


def default_callbacks(task: Task, cfg: TrainConfig, env: DistEnv) -> list[Callback]:
    """The task's callbacks and early stopping on every process; what writes files on rank 0 only."""
    every = [*task.callbacks()]
    if cfg.patience is not None:
        every.append(EarlyStopping(cfg.patience, cfg.min_delta))
    if not env.main:
        return every
    writers: list[Callback] = [History(files=cfg.logger != "none"), Visuals()]
    if cfg.logger == "tensorboard":
        writers.append(TensorBoardLogger())
    return [*every, *writers, Progress(), RunSummary()]


def fit(task: Task, cfg: TrainConfig, callbacks: Iterable[Callback] = (), *, run_dir: str | Path | None = None,
        resume: str | Path | None = None, overwrite: bool = False, notes: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    """Train ``task`` with ``cfg`` into a run folder; returns a summary (best metric, history…).

    Under ``torchrun`` every process calls this: they train data-parallel (NCCL on CUDA, gloo on CPU)
    and rank 0 alone writes the run folder.

    Args:
        callbacks: extra :class:`~tasks.engine.callbacks.Callback` objects, run (on every process) after
            the built-in history, visuals and progress ones and before checkpointing.
        run_dir: the run folder (default ``cfg.out``, else the task's, else a fresh ``runs/<task>-<time>``);
            a folder that already holds a run is refused unless ``resume`` or ``overwrite``.
        resume: a run folder or checkpoint to continue exactly (same weights, optimiser, RNGs, batches).
        notes: plain data stored in the checkpoints (e.g. why the weights fell back to random).
    """
    if isinstance(callbacks, (str, Path)):
        raise TypeError("fit(task, cfg, callbacks=…): pass the run folder as run_dir=… (or cfg.out)")
    env = ddp.env_from_torchrun()
    rt = Runtime.create(ddp.device_spec(cfg.device, env), cfg.amp, cfg.channels_last)
    created = ddp.init_process_group(env, rt.device)
    try:
        with ddp.quiet_unless_main(env):
            return _fit(task, cfg, list(callbacks), rt, env, run_dir, resume, overwrite, notes)
    finally:
        if created:
            ddp.dist.destroy_process_group()


def _fit(task: Task, cfg: TrainConfig, callbacks: list[Callback], rt: Runtime, env: DistEnv,
         run_dir: str | Path | None, resume: str | Path | None, overwrite: bool, notes: dict[str, Any] | None
         ) -> dict[str, Any]:
    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        run_dir = Path(ckpt["path"]).parent
    # one folder for all processes: rank 0's fresh name (its clock may have ticked on)
    run_dir = Path(ddp.broadcast_object(str(run_dir or cfg.out or task.run_dir or fresh_run_dir(task.name))))
    cfg.out, task.run_dir = str(run_dir), run_dir
    writer = [Checkpointing()] if env.main else []
    trainer = Trainer(task, cfg, rt, run_dir, [*default_callbacks(task, cfg, env), *callbacks, *writer], notes, env)
    folder = RunDir(run_dir, resume=ckpt is not None, overwrite=overwrite) if env.main else None
    with folder.claim() if folder else contextlib.nullcontext():
        ddp.barrier()  # the others wait for rank 0 to claim the folder (if it fails, torchrun ends them)
        log.info("run folder: %s", run_dir)
        trainer.setup(ckpt)
        if folder:
            resolved = {"task": task.name, **dataclasses.asdict(cfg), **dataclasses.asdict(task.cfg)}
            (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        with stop_on_signals(trainer.stop):
            trainer.share_rng()
            trainer.call("on_fit_start")
            if folder:
                folder.started = True
            trainer.loop()
    return trainer.summary()
