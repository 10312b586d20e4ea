"""Scoring few-shot episodes on precomputed features: nearest prototype by cosine similarity.

Options measured on Omniglot (docs/benchmarks.md, "Few-shot"): a power transform of the features,
centring each episode's features on the mean of its support set, and a transductive step that
assigns queries to classes in balanced numbers (each class gets the same number of queries, as in
every sampled episode).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .episodes import Episode

CENTERING = ("none", "support")
LEVELS = ("c3", "c4", "c5")
POOLS = ("avg", "max")


@dataclass(frozen=True)
class Scoring:
    """Which features an episode compares and how; the defaults are what scored best on Omniglot.

    Args:
        levels: backbone features compared, each globally pooled: ``("c5",)`` is what the head sees;
            ``("c3", "c4", "c5")`` adds earlier stages, less specialised to the training classes.
        pool: global ``"max"`` or ``"avg"`` pooling of each level.
        tta_shift: average each image's features over itself and two copies moved diagonally by
            this many pixels (0 = off; three forward passes per image). ``None``: 1/16 of the input
            side for a model trained with ``augment="shift"`` (3 px at 48 px: 3 points fewer errors
            on Omniglot), else off (not measured on photos).
        center: ``"support"`` subtracts the mean support feature from support and query features
            before the cosine (uses only the labelled shots, so it stays inductive); ``"none"``.
        power: square-root the (non-negative, post-ReLU) features first, the power transform of
            Hu et al. 2021: it makes their distribution more Gaussian and damps a few dominant channels.
        transductive: assign the queries jointly so that every class receives the same number of
            them (Hungarian algorithm on the cosine similarities); off by default because it
            needs the whole, balanced query set at once.
    """

    levels: tuple[str, ...] = ("c3", "c4", "c5")
    pool: str = "max"
    tta_shift: int | None = None
    center: str = "support"
    power: bool = True
    transductive: bool = False

    def __post_init__(self) -> None:
        if not self.levels or any(lv not in LEVELS for lv in self.levels):
            raise ValueError(f"levels must be among {LEVELS}, got {self.levels!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.tta_shift is not None and self.tta_shift < 0:
            raise ValueError(f"tta_shift must be >= 0, got {self.tta_shift}")
        if self.center not in CENTERING:
            raise ValueError(f"center must be one of {CENTERING}, got {self.center!r}")


def classify(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
             scoring: Scoring = Scoring()) -> torch.Tensor:
    """Predicted label of each query: the class whose mean L2-normalised support feature is nearest
    in cosine similarity (after the optional centring / balanced assignment of ``scoring``)."""
    support, query = support.float(), query.float()
    if scoring.power:
        support, query = support.clamp(min=0).sqrt(), query.clamp(min=0).sqrt()
    if scoring.center == "support":
        mean = support.mean(0)
        support, query = support - mean, query - mean
    ways = int(support_labels.max()) + 1
    protos = torch.zeros(ways, support.shape[1]).index_add_(0, support_labels, F.normalize(support, dim=1))
    sim = F.normalize(query, dim=1) @ F.normalize(protos, dim=1).T
    if scoring.transductive and len(query) % ways == 0:
        return balanced_assignment(sim)
    return sim.argmax(1)


def balanced_assignment(sim: torch.Tensor) -> torch.Tensor:
    """Labels maximising the total similarity with exactly ``len(sim) / ways`` queries per class."""
    from scipy.optimize import linear_sum_assignment

    ways = sim.shape[1]
    per_class = len(sim) // ways
    rows, cols = linear_sum_assignment(sim.repeat_interleave(per_class, dim=1).numpy(), maximize=True)
    pred = torch.empty(len(sim), dtype=torch.long)
    pred[torch.as_tensor(rows)] = torch.as_tensor(cols) // per_class
    return pred


def run_episodes(feats: torch.Tensor, episodes: Sequence[Episode], scoring: Scoring = Scoring()
                 ) -> dict[str, float]:
    """Mean accuracy and its 95 % confidence interval over ``episodes`` (indices into ``feats``)."""
    accs = []
    for ep in episodes:
        pred = classify(feats[ep.support], torch.tensor(ep.support_labels), feats[ep.query], scoring)
        accs.append((pred == torch.tensor(ep.query_labels)).float().mean().item())
    acc = torch.tensor(accs)
    std = acc.std(unbiased=True).item() if len(accs) > 1 else 0.0
    return {"accuracy": acc.mean().item(), "ci95": 1.96 * std / math.sqrt(len(accs)), "episodes": len(accs)}


def auto_tta_shift(img_size: int, augment: str) -> int:
    """The ``tta_shift`` that ``None`` stands for (see :class:`Scoring`).

    >>> auto_tta_shift(48, "shift"), auto_tta_shift(224, "imagenet")
    (3, 0)
    """
    return round(img_size / 16) if augment == "shift" else 0
