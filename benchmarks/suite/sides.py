"""The two sides of every comparison: our engine's real training step, and a plain PyTorch loop step.

Ours is :class:`tasks.engine.trainer.Trainer` built as ``resnet-tasks finetune`` builds it (preset or
defaults, random-init rules, the task's data and model), and timed through ``Trainer.train_step`` on
a batch its own loader produced: autocast, loss bookkeeping, scheduler, everything a run does per
step. The reference is the loop a user writes from the timm / smp / torchvision docs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tasks import get_config_class, get_task_class
from tasks.config import split_values
from tasks.engine.runtime import Runtime
from tasks.engine.trainer import Trainer
from tasks.runner import follow_weights, merge_values

from .timing import Ratio, alternate


@dataclass(frozen=True)
class Settings:
    device: torch.device
    amp: bool  # bf16 autocast, both sides
    channels_last: bool
    compile: bool  # torch.compile both models; compilation happens in the untimed warm-up
    rounds: int
    warmup: int
    seconds: float  # timed seconds per ratio at least (more rounds for cheap calls)
    quick: bool
    data: Path  # ../shared/data
    workdir: Path

    def ratio(self, key: str, ours: Callable[[], object], ref: Callable[[], object], note: str,
              warmup: int | None = None) -> Ratio:
        """Ours / the reference, timed in alternation with these settings (:func:`timing.alternate`)."""
        return alternate(key, ours, ref, self.device, rounds=self.rounds, seconds=self.seconds, note=note,
                         warmup=self.warmup if warmup is None else warmup)

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


# (image size, batch) of each task's timing and memory cases: (--quick, full)
SIZES = {"backbone": ((128, 8), (224, 16)), "classification": ((112, 16), (224, 32)),
         "segmentation": ((128, 4), (256, 8)), "detection": ((256, 2), (512, 2))}


def size_batch(task: str, s: Settings) -> tuple[int, int]:
    return SIZES[task][0 if s.quick else 1]


def our_trainer(task: str, values: dict[str, Any], s: Settings, name: str, config: str | None = None) -> Trainer:
    """A set-up Trainer for ``values`` (flags as the CLI takes them) on ``s.device``; nothing is written."""
    task, merged, user_keys = merge_values(task, config, values)
    train_cfg, task_cfg = split_values(merged, get_config_class(task))
    follow_weights(train_cfg, task_cfg, user_keys)
    train_cfg.workers, train_cfg.logger = 0, "none"
    run_dir = s.workdir / name
    rt = Runtime(s.device, torch.bfloat16 if s.amp else None, s.channels_last)
    trainer = Trainer(get_task_class(task)(task_cfg, seed=train_cfg.seed, run_dir=run_dir), train_cfg, rt,
                      run_dir, callbacks=[])
    trainer.setup(None)
    if s.compile:
        trainer.train_module = torch.compile(trainer.step_model)
    trainer.train_module.train()
    return trainer


def weights_file(arch: str, s: Settings) -> str:
    """A local file in the download's format (torchvision's state dict, random values): with it ours takes the
    defaults a user gets from ``--weights imagenet`` (the default), offline. Speed does not depend on the values."""
    import torchvision

    path = s.workdir / f"{arch}-torchvision-format.pth"
    if not path.exists():
        torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    return str(path)


def first_batch(trainer: Trainer) -> Any:
    """The first training batch of epoch 0, as the run's loader makes it (decoded, augmented, collated)."""
    trainer.batches.set_epoch(0)
    trainer.train_loader.dataset.set_epoch(0)
    return next(iter(trainer.train_loader))


def engine_step(trainer: Trainer, batch: Any, n: int) -> Callable[[], None]:
    def step() -> None:
        trainer.train_module.train()  # as the loop does each epoch; an inference case may have run between
        trainer.batch_iter = iter((batch,))
        trainer.train_step([n], n)
    return step


def engine_infer(trainer: Trainer, inputs: Any, s: Settings) -> Callable[[], Any]:
    """Our model's forward in eval mode, as ``evaluate``/``predict`` run it (autocast, no_grad)."""
    model = torch.compile(trainer.model) if s.compile else trainer.model
    inputs = trainer.rt.to_device(inputs)

    def infer() -> Any:
        model.eval()
        with torch.no_grad(), trainer.rt.autocast():
            return model(inputs)
    return infer


class Plain:
    """A plain loop's step: inputs to the device, autocast, forward, loss, backward, optimiser step.
    ``loss(model, inputs, targets)``; ``opt(params)`` builds the optimiser (default SGD, momentum 0.9)."""

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module, Any, Any], torch.Tensor], s: Settings,
                 opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None) -> None:
        self.s = s
        # the same host-to-device move as ours (Runtime.to_device): not a difference worth timing
        self.rt = Runtime(s.device, None, s.channels_last)
        self.model = model.to(s.device)
        if s.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.run = torch.compile(self.model) if s.compile else self.model
        self.loss = loss
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = opt(params) if opt else torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)

    def to_device(self, obj: Any) -> Any:
        return self.rt.to_device(obj)

    def step(self, inputs: Any, targets: Any) -> Callable[[], None]:
        def step() -> None:
            self.model.train()
            x, y = self.to_device(inputs), self.to_device(targets)
            with self.s.autocast():
                loss = self.loss(self.run, x, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return step

    def infer(self, inputs: Any) -> Callable[[], Any]:
        x = self.to_device(inputs)

        def infer() -> Any:
            self.model.eval()
            with torch.no_grad(), self.s.autocast():
                return self.run(x)
        return infer
