"""Batches for the loop: seeded order per epoch, no batch of one, resumable mid-epoch.

Every random choice of the data pipeline is a function of (run seed, epoch, sample index): the
order comes from :class:`~tasks.data.seeding.EpochSampler`, and a worker's global RNGs are
re-seeded per sample (:class:`SeededSamples`), so a resumed epoch sees the very same data whatever
the worker count and whichever worker a batch lands on.
"""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..data.seeding import EpochSampler, sample_seed
from .signals import ignore_signals_in_worker


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of the epoch's seeded order; a last batch of one joins the batch before it.

    BatchNorm cannot train on one sample once the deepest map is 1×1 ("Expected more than 1 value
    per channel"), so ``k·batch + 1`` samples give ``k`` batches, the last one ``batch + 1`` long:
    every sample is still seen every epoch. ``set_epoch(e, skip)`` drops the first ``skip`` batches
    (mid-epoch resume).

    >>> s = EpochBatchSampler(9, 4, seed=0)
    >>> [len(b) for b in s], len(s)
    ([4, 5], 2)
    >>> s.set_epoch(0, skip=1); [len(b) for b in s]
    [5]
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.order = EpochSampler(n, seed)
        self.n, self.batch_size = n, batch_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def batches(self) -> list[list[int]]:
        self.order.set_epoch(self.epoch)
        idx = self.order.order()
        out = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if len(out) > 1 and len(out[-1]) == 1:
            last = out.pop()
            out[-1] += last
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.skip:])

    def __len__(self) -> int:
        return self.steps_per_epoch - self.skip

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (rest > 1 or (rest == 1 and full == 0))


class SeededSamples(Dataset):
    """``dataset`` whose samples, when read in a worker, start from RNGs seeded by (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if get_worker_info() is not None:  # in the main process the run's own RNG stream is restored instead
            s = sample_seed(self.seed, "worker", self.epoch, i)
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)
        return self.dataset[i]


def loader_seed(seed: int, epoch: int) -> int:
    """Seed of the loader's generator in ``epoch`` (workers' base seed); stored in checkpoints."""
    return sample_seed(seed, "loader", epoch)


def make_loader(ds: Dataset, batch_size: int, workers: int, pin_memory: bool, collate_fn,
                batch_sampler: Sampler | None = None) -> DataLoader:
    """A loader whose workers ignore Ctrl-C/SIGTERM and whose seeds come from its own generator
    (iterating it never draws from the training RNG)."""
    kw = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": batch_size}
    return DataLoader(ds, num_workers=workers, collate_fn=collate_fn, pin_memory=pin_memory,
                      worker_init_fn=ignore_signals_in_worker, generator=torch.Generator().manual_seed(0), **kw)
