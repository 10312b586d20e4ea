"""What deployment is judged by: latency, size on disk, parameters and FLOPs (measured, never assumed)."""
from __future__ import annotations

import io
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn


@torch.no_grad()
def latency_ms(fn: Callable[[Any], Any], inputs: Any, warmup: int = 3, iters: int = 10) -> float:
    """Median wall time of ``fn(inputs)`` in milliseconds, after ``warmup`` untimed calls.

    Example:
        >>> latency_ms(lambda x: x * 2, torch.ones(4), warmup=1, iters=3) >= 0
        True
    """
    for _ in range(warmup):
        fn(inputs)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(inputs)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def saved_bytes(state: dict[str, torch.Tensor]) -> int:
    """Size of ``torch.save(state)``: the weights as a checkpoint would hold them."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass (a multiply-add counts 2), by ``torch.utils.flop_counter``.

    Example:
        >>> count_flops(nn.Linear(3, 2, bias=False), torch.ones(1, 3))
        12
    """
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(inputs)
    model.train(was)
    return counter.get_total_flops()
