"""Atomic, safely-loadable checkpoints (plain tensors and Python types; ``weights_only=True``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from resnet_backbones.errors import UserError

FORMAT = "resnet-tasks/1"
# What only --resume needs: without it a ResNet-18 checkpoint is ~45 MB instead of ~134 MB.
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng", "rng_ranks", "loader_seed")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or Ctrl-C at any moment leaves either the old or the new file, never half of one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def find_checkpoint(path: str | Path, prefer: str = "last") -> Path:
    """A checkpoint file, or ``<run dir>/{prefer}.pt`` when given a run folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in (f"{prefer}.pt", "last.pt", "best.pt"):
            if (p / name).is_file():
                return p / name
        raise UserError(f"run folder {p} holds no checkpoint (best.pt / last.pt)")
    if not p.is_file():
        raise UserError(f"checkpoint {p} not found; pass a .pt file or a run folder")
    return p


def load_checkpoint(path: str | Path, prefer: str = "last") -> dict[str, Any]:
    """Load a resnet-tasks checkpoint with ``torch.load(weights_only=True)``."""
    p = find_checkpoint(path, prefer)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read checkpoint {p}: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{p} is not a resnet-tasks checkpoint (for backbone weights use --weights {p})")
    ckpt["path"] = str(p)
    return ckpt


def strip_training_state(payload: dict[str, Any]) -> dict[str, Any]:
    """The model and its metadata only (what evaluate/predict/--init-from read)."""
    return {k: v for k, v in payload.items() if k not in TRAINING_STATE}


def inference_weights(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The weights that were evaluated and picked as best: the EMA ones when the run kept an EMA
    (``--ema-decay``, as timm's checkpoints hold ``state_dict_ema``), else the model's."""
    return ckpt.get("model_ema") or ckpt["model"]
