"""Which images make up each few-shot episode (sampling only; scoring is in ``fewshot.py``).

An :class:`Episode` holds indices into one feature matrix, so features are computed once per image
and every episode is a cheap gather.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

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


def sample_episodes(labels: Sequence[int], ways: int, shots: int, queries: int, episodes: int, seed: int
                    ) -> list[Episode]:
    """``episodes`` seeded N-way K-shot episodes drawn across all classes of ``labels``."""
    if min(ways, shots, queries, episodes) < 1 or ways < 2:
        raise DataError(f"need ways ≥ 2 and shots, queries, episodes ≥ 1; got ways={ways} shots={shots} "
                        f"queries={queries} episodes={episodes}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[int(y)].append(i)
    eligible = sorted(c for c, idx in by_class.items() if len(idx) >= shots + queries)
    if len(eligible) < ways:
        raise DataError(f"only {len(eligible)} class(es) have ≥ {shots + queries} images (shots + queries); "
                        f"lower --ways, --shots or --queries")
    out = []
    for e in range(episodes):
        g = torch.Generator().manual_seed(sample_seed(seed, "episode", e))
        classes = [eligible[i] for i in torch.randperm(len(eligible), generator=g)[:ways].tolist()]
        support, query = [], []
        for c in classes:
            idx = by_class[c]
            pick = [idx[i] for i in torch.randperm(len(idx), generator=g)[: shots + queries].tolist()]
            support.append(pick[:shots])
            query.append(pick[shots:])
        out.append(Episode(support=[i for s in support for i in s],
                           support_labels=[j for j in range(ways) for _ in range(shots)],
                           query=[i for q in query for i in q],
                           query_labels=[j for j in range(ways) for _ in range(queries)]))
    return out
