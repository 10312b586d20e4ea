"""Alternated timing: ours and the reference take turns, so a change of machine load hits both alike."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass
class Ratio:
    """Median of the per-round ratios ours/reference, and their spread (lowest, highest round)."""

    key: str
    median: float
    low: float
    high: float
    ours_s: float  # median seconds of one call
    ref_s: float
    rounds: int
    note: str = ""

    def as_json(self) -> dict:
        d = asdict(self)
        d.pop("key")
        return d


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def alternate(key: str, ours: Callable[[], object], ref: Callable[[], object], device: torch.device, *,
              rounds: int, warmup: int, note: str = "") -> Ratio:
    """``warmup`` untimed calls of each (allocator, autotuning, torch.compile), then ``rounds`` rounds of
    one call each; the order flips every round so that neither always runs on a cache the other warmed."""
    for _ in range(warmup):
        ours(), ref()
    t_ours, t_ref = [], []
    for i in range(rounds):
        pair = [(ours, t_ours), (ref, t_ref)]
        for fn, out in pair if i % 2 == 0 else reversed(pair):
            out.append(timed(fn, device))
    ratios = [a / b for a, b in zip(t_ours, t_ref)]
    return Ratio(key, statistics.median(ratios), min(ratios), max(ratios), statistics.median(t_ours),
                 statistics.median(t_ref), rounds, note)
