"""A checkpoint restored for deployment (through ``tasks.runner.restore``), and the data it came from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset

from resnet_backbones.errors import UserError

from ..base import Task
from ..runner import restore


@dataclass
class Source:
    """A restored model (eval mode, on the CPU), its task, its checkpoint and its data folder."""

    task: Task
    model: nn.Module
    ckpt: dict[str, Any]
    data: Path | None
    data_looked_for: str = ""

    def data_or_fail(self, what: str) -> Path:
        if self.data is None:
            raise UserError(f"{what} needs the run's data, which is not at {self.data_looked_for}; "
                            "pass --data DIR")
        return self.data

    def loader(self, ds: Dataset, batch_size: int) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, num_workers=0, collate_fn=self.task.collate_fn())


def data_folder(ckpt: dict[str, Any], override: str | Path | None) -> tuple[Path | None, str]:
    """(the data folder if it exists, else None; the folder looked for). ``override`` (``--data``)
    wins; then the run's own ``data``; a run on the generated demo set kept it in ``demo_data/``."""
    if override is not None:
        path = Path(override).expanduser()
        if not path.is_dir():
            raise UserError(f"data folder {path} not found")
        return path, str(path)
    data = ckpt["task_config"].get("data")
    if isinstance(data, (list, tuple)):
        data = data[0] if data else None
    path = Path(data).expanduser() if data else Path(ckpt["path"]).parent / "demo_data"
    return (path if path.is_dir() else None), str(path)


def load_source(checkpoint: str | Path, data: str | Path | None = None) -> Source:
    """Restore ``checkpoint`` (a file or a run folder) on the CPU in eval mode, and find its data."""
    task, model, _, ckpt = restore(checkpoint, "cpu")
    model.eval()
    folder, looked_for = data_folder(ckpt, data)
    return Source(task, model, ckpt, folder, looked_for)
