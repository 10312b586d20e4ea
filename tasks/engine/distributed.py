"""Data-parallel training through PyTorch's own engine: ``torchrun`` sets the environment, this reads it.

``torchrun --nproc-per-node N -m tasks finetune …`` starts N copies of the command; each one sees
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and joins one process group (NCCL on CUDA, gloo on CPU).
Everything here is a no-op in a single process, so the loop calls it unconditionally.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from resnet_backbones.errors import UserError

log = logging.getLogger(__name__)
# Rank 0 alone may run a task's evaluation (one that does not gather) or write a checkpoint while the
# others wait; gloo's and NCCL's defaults (30 / 10 minutes) would end a long run there.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder, checkpoints, plots and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def env_from_torchrun() -> DistEnv:
    """The torchrun environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); a single process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def device_spec(spec: str, env: DistEnv) -> str:
    """Each process of a CUDA run takes the GPU of its ``LOCAL_RANK`` (``auto``/``cuda`` → ``cuda:N``)."""
    if not env.distributed or spec not in ("auto", "cuda") or not torch.cuda.is_available():
        return spec
    return f"cuda:{env.local_rank}"


def init_process_group(env: DistEnv, device: torch.device) -> bool:
    """Join the group torchrun set up (NCCL on CUDA, gloo on CPU); ``True`` when this call created it."""
    if not env.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    log.info("data parallel: process %d of %d (%s, %s)", env.rank, env.world, dist.get_backend(), device)
    return True


@contextlib.contextmanager
def quiet_unless_main(env: DistEnv, loggers: tuple[str, ...] = ("tasks", "resnet_backbones")) -> Iterator[None]:
    """Info lines from rank 0 only (N copies of every line say nothing more); warnings from every rank."""
    if env.main:
        yield
        return
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over the processes (float64, so sums of losses and counts stay exact enough)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_tensor_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the processes in place (counts accumulated by a metric)."""
    if active():
        moved = t.to(_device())
        dist.all_reduce(moved)
        t.copy_(moved)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every process (pickled; for small things: paths, metrics)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, …]`` on every process (pickled)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every process, so that every shard of the
    validation set is evaluated by the very model rank 0 saves."""
    if active():
        for b in module.buffers():
            moved = b.to(_device())
            dist.broadcast(moved, 0)
            b.copy_(moved)


def sync_batchnorm(model: nn.Module) -> int:
    """Replace, in place, every BatchNorm whose parameters train by ``nn.SyncBatchNorm``; returns how many.

    BatchNorm of frozen stages (kept in eval mode) and ``FrozenBatchNorm2d`` (not a BatchNorm) stay as
    they are: they normalise with fixed statistics, there is nothing to synchronise.
    """
    count = 0
    for name, child in model.named_children():
        trains = isinstance(child, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in child.parameters())
        if trains and not isinstance(child, nn.SyncBatchNorm):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
            count += 1
        else:
            count += sync_batchnorm(child)
    return count


def check_sync_bn(device: torch.device, env: DistEnv) -> None:
    if device.type != "cuda" and env.distributed:
        raise UserError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on CPU); drop it, or "
                        "match a larger batch with --accumulate")


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``module`` (unchanged in a single process)."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
