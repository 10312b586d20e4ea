"""Seeded randomness that does not depend on worker count or on where a run was resumed.

Every random choice is a pure function of (run seed, epoch, sample index): data order comes from
:class:`EpochSampler`, augmentation from :func:`sample_seed`. A resumed run therefore sees exactly
the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Hashable, Iterator, Sequence

import torch
from torch.utils.data import Sampler


def sample_seed(*parts: int | str) -> int:
    """A 32-bit seed derived from ``parts`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class EpochSampler(Sampler[int]):
    """Shuffled order fixed by (seed, epoch); ``skip`` drops the first samples (mid-epoch resume)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(sample_seed(self.seed, "order", self.epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.skip:])

    def __len__(self) -> int:
        return self.n - self.skip


def stratified_pick(labels: Sequence[Hashable], per_class: int, seed: int, tag: str = "shots"
                    ) -> tuple[list[int], list[int]]:
    """Indices of ``per_class`` samples of each label (seeded) and the remaining indices.

    A class with fewer samples than asked keeps all of them (callers report that).
    """
    by_class: dict[Hashable, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y].append(i)
    picked: list[int] = []
    for y in sorted(by_class, key=str):
        idx = by_class[y]
        g = torch.Generator().manual_seed(sample_seed(seed, tag, str(y)))
        perm = torch.randperm(len(idx), generator=g).tolist()
        picked.extend(idx[j] for j in perm[:per_class])
    chosen = set(picked)
    return sorted(picked), [i for i in range(len(labels)) if i not in chosen]
