"""The JSON beside an exported model: everything a consumer needs to feed it and read its outputs.

``model.onnx`` gets ``model.onnx.json``. Besides the human-readable fields (inputs, outputs,
preprocessing, classes, parity) it keeps the task's config and metadata, so that
``resnet-tasks predict --model model.onnx`` writes exactly what ``predict --checkpoint`` writes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from resnet_backbones.errors import UserError

FORMAT = "resnet-tasks-export/1"


def sidecar_path(model_file: str | Path) -> Path:
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_sidecar(model_file: str | Path) -> dict[str, Any]:
    """The sidecar of ``model_file``; a missing file or a JSON that is not ours is a :class:`UserError`."""
    model_file = Path(model_file)
    if not model_file.is_file():
        raise UserError(f"model file {model_file} not found")
    path = sidecar_path(model_file)
    if not path.is_file():
        raise UserError(f"{path} not found: it is written by `resnet-tasks export` beside the model and holds "
                        "its preprocessing and classes; export the checkpoint again")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); export the checkpoint again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a resnet-tasks export description (format {FORMAT})")
    return meta
