"""Scoring few-shot episodes on precomputed features: nearest prototype by cosine similarity."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .episodes import Episode


def classify(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Predicted label of each query: the class whose mean L2-normalised support feature is nearest
    in cosine similarity."""
    ways = int(support_labels.max()) + 1
    support = F.normalize(support.float(), dim=1)
    protos = torch.zeros(ways, support.shape[1]).index_add_(0, support_labels, support)
    return (F.normalize(query.float(), dim=1) @ F.normalize(protos, dim=1).T).argmax(1)


def run_episodes(feats: torch.Tensor, episodes: Sequence[Episode]) -> dict[str, float]:
    """Mean accuracy and its 95 % confidence interval over ``episodes`` (indices into ``feats``)."""
    accs = []
    for ep in episodes:
        pred = classify(feats[ep.support], torch.tensor(ep.support_labels), feats[ep.query])
        accs.append((pred == torch.tensor(ep.query_labels)).float().mean().item())
    acc = torch.tensor(accs)
    std = acc.std(unbiased=True).item() if len(accs) > 1 else 0.0
    return {"accuracy": acc.mean().item(), "ci95": 1.96 * std / math.sqrt(len(accs)), "episodes": len(accs)}
