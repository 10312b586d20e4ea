"""Device, mixed precision and memory format, decided once per run."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from resnet_backbones.errors import UserError


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec} asked for CUDA, but no CUDA device is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


@dataclass
class Runtime:
    """What a task needs to run a model: device, autocast and memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None  # None = full precision
    channels_last: bool = False

    @classmethod
    def create(cls, device: str = "auto", amp: bool | None = None, channels_last: bool = True) -> "Runtime":
        dev = resolve_device(device)
        cuda = dev.type == "cuda"
        if amp is None:
            amp = cuda
        dtype = None
        if amp:
            if cuda:
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            else:
                dtype = torch.bfloat16  # CPU autocast supports bf16 only
        return cls(dev, dtype, channels_last and cuda)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def needs_grad_scaler(self) -> bool:
        return self.amp_dtype == torch.float16

    def to_device(self, obj: Any) -> Any:
        """Move tensors in nested lists/tuples/dicts to the device (4-D ones channels_last if set)."""
        if isinstance(obj, torch.Tensor):
            obj = obj.to(self.device, non_blocking=True)
            if self.channels_last and obj.dim() == 4 and obj.is_floating_point():
                obj = obj.contiguous(memory_format=torch.channels_last)
            return obj
        if isinstance(obj, dict):
            return {k: self.to_device(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_device(v) for v in obj)
        return obj

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model
