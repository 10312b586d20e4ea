"""The one training loop. Tasks supply data, model, loss and metrics (``tasks.base.Task``)."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from resnet_backbones.errors import UserError

from ..base import Task
from ..config import TrainConfig
from ..data.seeding import EpochSampler
from .checkpoint import load_checkpoint, save_checkpoint
from .optim import build_optimizer, build_scheduler, param_groups
from .runlog import write_history
from .runtime import Runtime


class TrainingInterrupted(Exception):
    """Ctrl-C / SIGTERM during training; a resumable checkpoint has been written."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"interrupted; checkpoint saved to {checkpoint}; continue with --resume {checkpoint.parent}")
        self.checkpoint = checkpoint


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Treat SIGTERM (cluster schedulers, ``kill``) like Ctrl-C, so it too leaves a checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(ds, cfg: TrainConfig, rt: Runtime, collate_fn, sampler=None) -> DataLoader:
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, shuffle=False,
                      num_workers=cfg.workers, collate_fn=collate_fn,
                      pin_memory=rt.device.type == "cuda", persistent_workers=False)


def _print(msg: str) -> None:
    tqdm.write(msg, file=sys.stdout)


def fit(task: Task, cfg: TrainConfig, run_dir: Path, resume: str | Path | None = None,
        notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``task`` with ``cfg``, writing everything into ``run_dir``; returns a summary.

    ``resume`` (a run folder or checkpoint) continues exactly where that run stopped, mid-epoch
    included: same optimiser/scheduler/scaler state, same remaining batches.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rt = Runtime.create(cfg.device, cfg.amp, cfg.channels_last)
    seed_everything(cfg.seed)

    train_ds, val_ds = task.build_datasets()
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise UserError(f"empty {'training' if len(train_ds) == 0 else 'validation'} set; check --data")
    model = rt.prepare_model(task.build_model())
    step_model, train_ds, val_ds = task.prepare_training(model, train_ds, val_ds, rt)
    trainable = [p for p in step_model.parameters() if p.requires_grad]
    train_all = any(p.requires_grad for p in model.parameters()) or bool(trainable)

    sampler = EpochSampler(len(train_ds), cfg.seed)
    collate = task.collate_fn()
    train_loader = make_loader(train_ds, cfg, rt, collate, sampler)
    val_loader = make_loader(val_ds, cfg, rt, collate)
    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    opt = build_optimizer(param_groups(step_model, task.backbone_parameters(model), cfg), cfg)
    sched = build_scheduler(opt, cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.needs_grad_scaler)

    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "loss_sum": 0.0,
                             "best_metric": None, "best_epoch": None, "history": []}
    if resume is not None:
        ckpt = load_checkpoint(resume)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state.update(ckpt["state"])
        torch.set_rng_state(ckpt["rng_torch"])
        _print(f"resuming {ckpt['path']} at epoch {state['epoch'] + 1}, step {state['step_in_epoch']}")
    resolved = {"task": task.name, **dataclasses.asdict(cfg), **dataclasses.asdict(task.cfg)}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    def payload() -> dict[str, Any]:
        return {"task": task.name, "task_config": dataclasses.asdict(task.cfg),
                "train_config": dataclasses.asdict(cfg), "task_meta": task.checkpoint_meta(),
                "notes": notes or {}, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "state": dict(state), "rng_torch": torch.get_rng_state()}

    last, best = run_dir / "last.pt", run_dir / "best.pt"
    if resume is None:
        save_checkpoint(last, payload())  # usable from the first second on
    params_to_clip = [p for p in step_model.parameters()]
    with sigterm_as_interrupt():
        try:
            for epoch in range(state["epoch"], cfg.epochs if train_all else 1):
                t0 = time.perf_counter()
                task.on_epoch_start(model, epoch)
                if train_all:
                    sampler.set_epoch(epoch, skip=state["step_in_epoch"] * cfg.batch_size)
                    if hasattr(train_ds, "set_epoch"):
                        train_ds.set_epoch(epoch)
                    step_model.train()
                    bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None,
                               dynamic_ncols=True)
                    for batch in bar:
                        batch = rt.to_device(batch)
                        with rt.autocast():
                            losses = task.training_step(step_model, batch)
                        loss = sum(losses.values())
                        if not torch.isfinite(loss):
                            raise UserError(f"loss became {loss.item()} at epoch {epoch + 1}, step "
                                            f"{state['step_in_epoch'] + 1}; lower --lr or set --grad-clip")
                        opt.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        if cfg.grad_clip > 0:
                            scaler.unscale_(opt)
                            torch.nn.utils.clip_grad_norm_(params_to_clip, cfg.grad_clip)
                        scaler.step(opt)
                        scaler.update()
                        sched.step()
                        state["step_in_epoch"] += 1
                        state["global_step"] += 1
                        state["loss_sum"] += loss.item()
                        bar.set_postfix(loss=f"{state['loss_sum'] / state['step_in_epoch']:.4f}",
                                        lr=f"{opt.param_groups[-1]['lr']:.2e}")
                step_model.eval()
                metrics = task.evaluate(step_model, val_loader, rt)
                rec = {"epoch": epoch + 1}
                if train_all:
                    rec["train_loss"] = state["loss_sum"] / max(1, state["step_in_epoch"])
                rec.update({k: float(v) for k, v in metrics.items()})
                rec.update({"lr": opt.param_groups[-1]["lr"], "time_s": round(time.perf_counter() - t0, 2)})
                state["history"].append(rec)
                write_history(run_dir, state["history"])
                task.save_visuals(step_model, val_loader, rt, run_dir / "visuals", epoch + 1)
                primary = metrics[task.primary_metric]
                improved = state["best_metric"] is None or primary > state["best_metric"]
                if improved:
                    state["best_metric"], state["best_epoch"] = float(primary), epoch + 1
                state.update(epoch=epoch + 1, step_in_epoch=0, loss_sum=0.0)
                save_checkpoint(last, payload())
                if improved:
                    save_checkpoint(best, payload())
                shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in rec.items() if k not in ("lr",))
                _print(f"{shown}{'  (best)' if improved else ''}")
        except KeyboardInterrupt:
            save_checkpoint(last, payload())
            raise TrainingInterrupted(last) from None
    return {"run_dir": str(run_dir), "best_metric": state["best_metric"], "best_epoch": state["best_epoch"],
            "primary_metric": task.primary_metric, "history": state["history"]}
