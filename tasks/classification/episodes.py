"""N-way K-shot episodic evaluation with a prototype (nearest class mean, cosine) classifier."""
from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F

from ..data.io import DataError
from ..data.seeding import sample_seed


def run_episodes(feats: torch.Tensor, labels: torch.Tensor, ways: int, shots: int, queries: int,
                 episodes: int, seed: int) -> dict[str, float]:
    """Mean accuracy and 95 % confidence interval over ``episodes`` seeded episodes.

    ``feats`` are one feature vector per image (computed once); each episode samples ``ways``
    classes with ``shots`` support and ``queries`` query images each.
    """
    if min(ways, shots, queries, episodes) < 1 or ways < 2:
        raise DataError(f"need ways ≥ 2 and shots, queries, episodes ≥ 1; got ways={ways} shots={shots} "
                        f"queries={queries} episodes={episodes}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels.tolist()):
        by_class[y].append(i)
    eligible = sorted(c for c, idx in by_class.items() if len(idx) >= shots + queries)
    if len(eligible) < ways:
        raise DataError(f"only {len(eligible)} class(es) have ≥ {shots + queries} images (shots + queries); "
                        f"lower --ways, --shots or --queries")
    feats = F.normalize(feats.float(), dim=1)
    accs = []
    for e in range(episodes):
        g = torch.Generator().manual_seed(sample_seed(seed, "episode", e))
        classes = [eligible[i] for i in torch.randperm(len(eligible), generator=g)[:ways].tolist()]
        support, query, qlabels = [], [], []
        for j, c in enumerate(classes):
            idx = by_class[c]
            pick = [idx[i] for i in torch.randperm(len(idx), generator=g)[: shots + queries].tolist()]
            support.append(feats[pick[:shots]].mean(0))
            query.append(feats[pick[shots:]])
            qlabels += [j] * queries
        protos = F.normalize(torch.stack(support), dim=1)
        pred = (torch.cat(query) @ protos.T).argmax(1)
        accs.append((pred == torch.tensor(qlabels)).float().mean().item())
    acc = torch.tensor(accs)
    std = acc.std(unbiased=True).item() if episodes > 1 else 0.0
    return {"accuracy": acc.mean().item(), "ci95": 1.96 * std / math.sqrt(episodes), "episodes": episodes,
            "ways": ways, "shots": shots, "queries": queries}
