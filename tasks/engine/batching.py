"""Batches for the loop: seeded order per epoch, no batch of one, resumable mid-epoch.

Every random choice of the data pipeline is a function of (run seed, epoch, sample index): the
order comes from :class:`~tasks.data.seeding.EpochSampler`, and a worker's global RNGs are
re-seeded per sample (:class:`SeededSamples`), so a resumed epoch sees the very same data whatever
the worker count and whichever worker a batch lands on.
"""
from __future__ import annotations

import random
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from resnet_backbones.errors import UserError

from ..data.seeding import EpochSampler, sample_seed
from .signals import ignore_signals_in_worker


class EpochBatchSampler(Sampler[list[int]]):
    """This process's batches of the epoch's seeded order, grouped into optimiser steps.

    The epoch's order (a seeded permutation, or with ``weights`` a seeded draw with replacement as
    ``WeightedRandomSampler`` makes) is cut into steps of ``batch_size × accumulate × world`` samples.
    Each of the ``world`` processes takes a contiguous block of every step and cuts it into batches of
    ``batch_size``: so N processes see the same batches (and BatchNorm groups) as one process with
    ``accumulate`` N, and their union is one process's step of an N× larger batch. (torch's
    ``DistributedSampler`` pads the set with repeated samples and deals them round-robin; neither
    would keep that equality.)

    BatchNorm cannot train on one sample once the deepest map is 1×1 ("Expected more than 1 value
    per channel"): a last step too small to give every process two samples joins the step before,
    and a last batch of one joins the batch before it, so every sample is still seen every epoch.
    ``set_epoch(e, skip)`` drops the first ``skip`` steps (mid-epoch resume).

    >>> s = EpochBatchSampler(9, 4, seed=0)
    >>> [len(b) for b in s], s.steps_per_epoch
    ([4, 5], 2)
    >>> s.set_epoch(0, skip=1); [len(b) for b in s]
    [5]
    >>> [[len(b) for b in step] for step in EpochBatchSampler(16, 2, seed=0, accumulate=2, world=2).steps()]
    [[2, 2], [2, 2]]
    """

    def __init__(self, n: int, batch_size: int, seed: int, accumulate: int = 1, world: int = 1, rank: int = 0,
                 weights: Sequence[float] | None = None) -> None:
        if n < 2 * world and world > 1:
            raise UserError(f"{n} training samples cannot be shared by {world} processes (each needs 2)")
        self.order = EpochSampler(n, seed)
        self.n, self.batch_size, self.accumulate, self.seed = n, batch_size, accumulate, seed
        self.world, self.rank = world, rank
        self.weights = torch.as_tensor(weights, dtype=torch.float64) if weights is not None else None
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def epoch_order(self) -> list[int]:
        if self.weights is None:
            self.order.set_epoch(self.epoch)
            return self.order.order()
        g = torch.Generator().manual_seed(sample_seed(self.seed, "weighted-order", self.epoch))
        return torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()

    def steps(self) -> list[list[list[int]]]:
        """Every step of the epoch: this process's batches (lists of sample indices)."""
        idx, size = self.epoch_order(), self.batch_size * self.accumulate * self.world
        chunks = [idx[i:i + size] for i in range(0, len(idx), size)]
        if len(chunks) > 1 and len(chunks[-1]) < 2 * self.world:
            last = chunks.pop()
            chunks[-1] += last
        return [self._batches(np.array_split(np.array(c), self.world)[self.rank].tolist()) for c in chunks]

    def step_sizes(self) -> list[int]:
        """Samples per step over all processes (what a batch's loss is weighted by)."""
        full, rest = divmod(self.n, self.batch_size * self.accumulate * self.world)
        sizes = [self.batch_size * self.accumulate * self.world] * full
        if rest:
            if sizes and rest < 2 * self.world:
                sizes[-1] += rest
            else:
                sizes.append(rest)
        return sizes

    def _batches(self, part: list[int]) -> list[list[int]]:
        out = [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        if len(out) > 1 and len(out[-1]) == 1:
            last = out.pop()
            out[-1] += last
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter([b for step in self.steps()[self.skip:] for b in step])

    def __len__(self) -> int:
        return sum(len(step) for step in self.steps()[self.skip:])

    @property
    def steps_per_epoch(self) -> int:
        return len(self.step_sizes())


class Shard(Sampler[int]):
    """This process's contiguous block of ``range(n)``, no sample repeated (validation: every sample
    counted once over all processes, unlike ``DistributedSampler``'s padding)."""

    def __init__(self, n: int, world: int = 1, rank: int = 0) -> None:
        self.indices = np.array_split(np.arange(n), world)[rank].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


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
                batch_sampler: Sampler | None = None, sampler: Sampler | None = None) -> DataLoader:
    """A loader whose workers ignore Ctrl-C/SIGTERM and whose seeds come from its own generator
    (iterating it never draws from the training RNG)."""
    kw = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": batch_size,
                                                                              "sampler": sampler}
    return DataLoader(ds, num_workers=workers, collate_fn=collate_fn, pin_memory=pin_memory,
                      worker_init_fn=ignore_signals_in_worker, generator=torch.Generator().manual_seed(0), **kw)
