"""``resnet-tasks predict --model FILE``: an exported model (ONNX through ONNX Runtime) on image files.

The task is rebuilt from the sidecar alone (its config and metadata), so the outputs are exactly
those of ``predict --checkpoint``: the same preprocessing, the same files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_backbones.errors import UserError

from .. import get_config_class, get_task_class
from ..config import build
from ..engine.runtime import Runtime
from ..runner import collect_images
from . import formats
from .adapters import adapter_for
from .sidecar import read_sidecar


class NCHWToNHWC(nn.Module):
    """The tasks hand over ``(B, 3, H, W)``; a ``--layout nhwc`` export takes ``(B, H, W, 3)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x.permute(0, 2, 3, 1).contiguous())


def load_exported(model_file: str | Path, threads: int | None = None) -> tuple[Any, nn.Module, dict[str, Any]]:
    """(task rebuilt from the sidecar, the file as a module taking float32 NCHW batches, sidecar)."""
    meta = read_sidecar(model_file)
    adapter = adapter_for(meta["task"])
    cfg = build(get_config_class(meta["task"]), {**meta["task_config"], "weights": None})
    task = get_task_class(meta["task"]).from_checkpoint(cfg, meta["task_meta"])
    module = formats.load(meta["model_format"], model_file, adapter, threads, dtype=meta["inputs"][0]["dtype"])
    if meta["inputs"][0]["layout"] == "NHWC":
        module = NCHWToNHWC(module)
    return task, module.eval(), meta


def predict_exported(model_file: str | Path, inputs: list[str], out: str | Path) -> list[dict]:
    paths = collect_images(inputs)
    Path(out).mkdir(parents=True, exist_ok=True)
    task, module, meta = load_exported(model_file)
    try:
        return task.predict(module, paths, Path(out), Runtime.create("cpu", None, False))
    except Exception as e:
        if "onnxruntime" not in type(e).__module__:
            raise
        shape = meta["inputs"][0]["shape"]
        raise UserError(f"{model_file} cannot run these images ({str(e).splitlines()[0][:200]}); it takes "
                        f"{shape} inputs: export again with --dynamic for other image sizes") from e
