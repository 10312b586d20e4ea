"""Which images make up each few-shot episode (sampling only; scoring is in ``fewshot.py``).

An :class:`Episode` holds indices into one feature matrix, so features are computed once per image
and every episode is a cheap gather. Two protocols:

* across classes (``groups=None``): the N classes of an episode are drawn from all classes;
* within groups: an episode first draws a group (e.g. an Omniglot alphabet), then N classes of it,
  the task of Lake et al. 2015, where the classes of an episode look alike.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import torch

from ..data.io import DataError
from ..data.seeding import sample_seed


@dataclass(frozen=True)
class Episode:
    """``support[i]`` has label ``support_labels[i]`` and ``query[j]`` has ``query_labels[j]``;
    labels are 0 … ways-1 within the episode."""

    support: list[int]
    support_labels: list[int]
    query: list[int]
    query_labels: list[int]

    @property
    def ways(self) -> int:
        return max(self.support_labels) + 1


def _check_sizes(ways: int, shots: int, queries: int, episodes: int) -> None:
    if min(ways, shots, queries, episodes) < 1 or ways < 2:
        raise DataError(f"need ways ≥ 2 and shots, queries, episodes ≥ 1; got ways={ways} shots={shots} "
                        f"queries={queries} episodes={episodes}")


def _images_by_class(labels: Sequence[int], min_images: int) -> dict[int, list[int]]:
    """Indices of each class that has at least ``min_images`` images."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[int(y)].append(i)
    return {c: idx for c, idx in sorted(by_class.items()) if len(idx) >= min_images}


def usable_groups(labels: Sequence[int], groups: Mapping[int, Hashable], ways: int, min_images: int
                  ) -> dict[Hashable, list[int]]:
    """Groups that hold at least ``ways`` classes with ``min_images`` images each → those classes.

    Raises :class:`DataError` naming the largest group's size when no group is big enough.
    """
    members: dict[Hashable, list[int]] = defaultdict(list)
    for c in _images_by_class(labels, min_images):
        members[groups[c]].append(c)
    usable = {grp: cls for grp, cls in sorted(members.items(), key=lambda kv: str(kv[0])) if len(cls) >= ways}
    if not usable:
        largest = max(members.items(), key=lambda kv: len(kv[1]), default=(None, []))
        raise DataError(f"no group has {ways} classes with ≥ {min_images} images (shots + queries); the "
                        f"largest, {largest[0]!r}, has {len(largest[1])}; lower --ways (or --shots/--queries)")
    return usable


def _episode(by_class: Mapping[int, list[int]], classes: list[int], shots: int, queries: int,
             g: torch.Generator) -> Episode:
    support, query = [], []
    for c in classes:
        idx = by_class[c]
        pick = [idx[i] for i in torch.randperm(len(idx), generator=g)[: shots + queries].tolist()]
        support += pick[:shots]
        query += pick[shots:]
    ways = len(classes)
    return Episode(support=support, support_labels=[j for j in range(ways) for _ in range(shots)],
                   query=query, query_labels=[j for j in range(ways) for _ in range(queries)])


def sample_episodes(labels: Sequence[int], ways: int, shots: int, queries: int, episodes: int, seed: int,
                    groups: Mapping[int, Hashable] | None = None) -> list[Episode]:
    """``episodes`` seeded N-way K-shot episodes; supports and queries of an episode never overlap.

    Args:
        labels: class index of each image (indices into the feature matrix).
        groups: class index → group; when given, all classes of an episode come from one group
            (drawn uniformly among the groups with ``ways`` usable classes, see :func:`usable_groups`).

    Example:
        >>> eps = sample_episodes([0, 0, 1, 1, 2, 2], ways=2, shots=1, queries=1, episodes=3, seed=0)
        >>> len(eps), eps[0].ways, len(eps[0].support), len(eps[0].query)
        (3, 2, 2, 2)
    """
    _check_sizes(ways, shots, queries, episodes)
    by_class = _images_by_class(labels, shots + queries)
    if groups is None:
        pools = [list(by_class)]
        if len(pools[0]) < ways:
            raise DataError(f"only {len(pools[0])} class(es) have ≥ {shots + queries} images (shots + queries); "
                            f"lower --ways, --shots or --queries")
    else:
        pools = list(usable_groups(labels, groups, ways, shots + queries).values())
    out = []
    for e in range(episodes):
        g = torch.Generator().manual_seed(sample_seed(seed, "episode", e))
        # Across classes draws nothing here, so its episodes stay those of earlier versions.
        pool = pools[0] if len(pools) == 1 else pools[int(torch.randint(len(pools), (1,), generator=g))]
        classes = [pool[i] for i in torch.randperm(len(pool), generator=g)[:ways].tolist()]
        out.append(_episode(by_class, classes, shots, queries, g))
    return out
