"""Fine-tuning optimiser and schedule: lower backbone LR, no decay on norms/biases, warmup + cosine or step."""
from __future__ import annotations

import logging
import math
from typing import Iterable

import torch
from torch import nn

from ..config import TrainConfig

log = logging.getLogger(__name__)
# Warmup never takes more than this share of the run: a 1-epoch run with --warmup-epochs 1 would
# otherwise be pure warmup and never reach its learning rate.
MAX_WARMUP_FRACTION = 0.2


def param_groups(model: nn.Module, backbone_params: Iterable[nn.Parameter], cfg: TrainConfig) -> list[dict]:
    """Four groups: (backbone | head) × (decay | no decay).

    Frozen parameters are included so that a freeze schedule can unfreeze them later; the
    optimiser skips them while their ``grad`` is None.
    """
    bb = {id(p) for p in backbone_params}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        decay = p.ndim > 1  # norm scales and biases are 1-D; decaying them hurts fine-tuning
        groups.setdefault((id(p) in bb, decay), []).append(p)
    out = []
    for (is_bb, decay), params in sorted(groups.items()):
        out.append({"params": params, "lr": cfg.lr * (cfg.backbone_lr_mult if is_bb else 1.0),
                    "weight_decay": cfg.weight_decay if decay else 0.0,
                    "name": f"{'backbone' if is_bb else 'head'}{'' if decay else '_no_decay'}"})
    return out


def build_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    # torch's fused kernels (one pass over all parameters of a dtype and device) instead of its defaults,
    # which on CPU are a Python loop of small ops per parameter. ResNet-18, 2 CPU threads, one step:
    # SGD 31 → 6 ms, AdamW 41 → 8 ms (foreach 40 ms), i.e. 5-7 % of a 112 px classification step.
    # The result is as close to a float64 optimiser as the loop's (same max error) and deterministic,
    # so accumulation and --resume stay exact (tests/test_training_features.py, tests/test_engine.py).
    if cfg.optimizer == "sgd":
        cls, kw = torch.optim.SGD, {"momentum": 0.9, "nesterov": True}
    else:
        cls, kw = torch.optim.AdamW, {}
    try:
        return cls(groups, lr=cfg.lr, fused=True, **kw)
    except RuntimeError:  # a parameter on a device, or of a dtype, that has no fused kernel
        return cls(groups, lr=cfg.lr, **kw)


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """``warmup_epochs`` in steps, capped to :data:`MAX_WARMUP_FRACTION` of the run (said when capped).

    >>> warmup_steps(1.0, 10, 100), warmup_steps(1.0, 10, 10)
    (10, 2)
    """
    steps, cap = round(warmup_epochs * steps_per_epoch), int(MAX_WARMUP_FRACTION * total_steps)
    if steps > cap:
        log.info("warmup capped to %d of %d steps (--warmup-epochs %g would be %d): at most %d%% of the run",
                 cap, total_steps, warmup_epochs, steps, round(100 * MAX_WARMUP_FRACTION))
    return min(steps, cap)


def build_scheduler(opt: torch.optim.Optimizer, total_steps: int, warmup_steps: int, kind: str = "cosine",
                    step_every: int = 0, gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warmup from 1 %, then ``"cosine"`` decay to 0 at ``total_steps``, or ``"step"``:
    × ``gamma`` every ``step_every`` steps counted from the start (torchvision's StepLR, per epoch when
    ``step_every`` is an epoch's steps).

    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    >>> s = build_scheduler(opt, 6, 0, kind="step", step_every=2, gamma=0.5)
    >>> [s.lr_lambdas[0](i) for i in range(6)]
    [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """
    if kind not in ("cosine", "step"):
        raise ValueError(f"kind must be cosine or step, got {kind!r}")
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / warmup_steps
        if kind == "step":
            return gamma ** (step // max(1, step_every))
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
