"""Alternated timing: ours and the reference take turns, so a change of machine load hits both alike."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass
class Ratio:
    """Median of the per-round ratios ours/reference, and their spread (lowest, highest round); ``best``
    is the ratio of the two fastest calls, the figure least disturbed by other jobs on a shared machine."""

    key: str
    median: float
    low: float
    high: float
    ours_s: float  # median seconds of one call
    ref_s: float
    rounds: int
    note: str = ""
    best: float = float("nan")

    def as_json(self) -> dict:
        d = asdict(self)
        d.pop("key")
        return d


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Wall time. (Process CPU time was tried: with two intra-op threads it varied more, since a thread
# spin-waits while its sibling is descheduled by another job.) A dict so that tests can swap the clock.
CLOCK = {"fn": time.perf_counter}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    clock = CLOCK["fn"]
    sync(device)
    t = clock()
    fn()
    sync(device)
    return clock() - t


PROFILE: list[str] = []  # keys (or prefixes) to profile, set by --profile


def profile(key: str, ours: Callable[[], object], ref: Callable[[], object], device: torch.device, rows: int = 15
            ) -> None:
    """Print torch.profiler's operator table (self CPU time, and CUDA time on a GPU) of one call of each side."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for side, fn in (("ours", ours), ("reference", ref)):
        with torch_profile(activities=activities) as prof:
            fn()
            sync(device)
        print(f"\n--- profile {key}: {side}\n{prof.key_averages().table(sort_by=sort, row_limit=rows)}", flush=True)


MAX_ROUNDS_FACTOR = 10  # --seconds adds rounds up to this many times --rounds


def alternate(key: str, ours: Callable[[], object], ref: Callable[[], object], device: torch.device, *,
              rounds: int, warmup: int, seconds: float = 0.0, note: str = "") -> Ratio:
    """``warmup`` untimed calls of each (allocator, autotuning, torch.compile), then at least ``rounds``
    rounds of one call each, and more until the timed calls add up to ``seconds`` (at most
    ``MAX_ROUNDS_FACTOR × rounds``): a cheap call, whose bar is tighter, gets more rounds. The order flips
    every round so that neither always runs on a cache the other warmed."""
    for _ in range(warmup):
        ours(), ref()
    t_ours: list[float] = []
    t_ref: list[float] = []
    i, total = 0, 0.0
    while i < rounds or (total < seconds and i < MAX_ROUNDS_FACTOR * rounds):
        pair = [(ours, t_ours), (ref, t_ref)]
        for fn, out in pair if i % 2 == 0 else reversed(pair):
            out.append(timed(fn, device))
            total += out[-1]
        i += 1
    if any(key.startswith(p) for p in PROFILE):
        profile(key, ours, ref, device)
    ratios = [a / b for a, b in zip(t_ours, t_ref)]
    return Ratio(key, statistics.median(ratios), min(ratios), max(ratios), statistics.median(t_ours),
                 statistics.median(t_ref), i, note, min(t_ours) / min(t_ref))
