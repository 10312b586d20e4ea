"""The three export formats: write a model to a file, and load the file back as a callable module.

- ``onnx``: ``torch.onnx.export`` (the torch.export-based exporter; detection takes torchvision's
  supported TorchScript-based path), run by ONNX Runtime on the CPU.
- ``torchscript``: ``torch.jit.trace``, loaded with ``torch.jit.load`` (C++ ``torch::jit::load``).
- ``exported-program``: ``torch.export``, loaded with ``torch.export.load`` (AOTInductor, ExecuTorch).

A loaded module takes and returns what the PyTorch model does (a float16 file takes and returns
float32 through :class:`CastIO`), so parity checks and the tasks' own ``predict`` run on it unchanged.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_backbones.errors import UserError

from .adapters import Adapter

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
LEGACY_ONNX_OPSET = 17  # torchvision's detection models are tested with the TorchScript-based exporter


class OnnxModule(nn.Module):
    """An ONNX file run by ONNX Runtime (CPU), called like the PyTorch model it came from.

    Args:
        path: the ``.onnx`` file.
        adapter: the task's adapter (output names; one image per call or a batch).
        threads: intra-op threads (default: ONNX Runtime's, one per core).
    """

    def __init__(self, path: str | Path, adapter: Adapter, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.adapter = adapter

    def run(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(a) for a in self.session.run(None, {self.input_name: x.detach().cpu().numpy()})]

    def forward(self, x: Any) -> Any:
        if not self.adapter.batched:
            return [dict(zip(self.adapter.output_names, self.run(im))) for im in x]
        outs = self.run(x)
        return outs[0] if len(outs) == 1 else tuple(outs)


@contextlib.contextmanager
def quiet():
    """The exporters print progress and tracer warnings that say nothing to a user of the CLI."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def save(fmt: str, module: nn.Module, example: Any, path: Path, adapter: Adapter, dynamic: bool,
         opset: int | None, layout: str = "nchw") -> None:
    """Write ``module`` traced on ``example`` (one batch) to ``path`` in format ``fmt``."""
    with quiet(), torch.no_grad():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, (example,), check_trace=False), str(path))
        elif fmt == "exported-program":  # a program keeps its example inputs: two images, not the batch
            program = torch.export.export(module, (example[:2],), dynamic_shapes=adapter.dynamic_shapes(dynamic, layout))
            torch.export.save(program, str(path))
        elif not adapter.batched:
            axes = {"images": [1, 2], **{name: [0] for name in adapter.output_names}}
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset or LEGACY_ONNX_OPSET,
                              input_names=list(adapter.input_names), output_names=list(adapter.output_names),
                              dynamic_axes=axes)
        else:
            torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=opset, external_data=False,
                              input_names=list(adapter.input_names), output_names=list(adapter.output_names),
                              dynamic_shapes=adapter.dynamic_shapes(dynamic, layout), verbose=False)


def load(fmt: str, path: str | Path, adapter: Adapter, threads: int | None = None, dtype: str = "float32"
         ) -> nn.Module:
    """The file at ``path`` as a module that takes and returns what the original model does;
    ``dtype``: the file's input dtype (a ``float16`` file is called with, and returns, float32)."""
    if dtype not in ("float32", "float16"):
        raise UserError(f"{path}: unknown input dtype {dtype!r} (float32 or float16)")
    module = _load(fmt, path, adapter, threads)
    return module if dtype == "float32" else CastIO(module, getattr(torch, dtype))


def _load(fmt: str, path: str | Path, adapter: Adapter, threads: int | None) -> nn.Module:
    if fmt == "onnx":
        return OnnxModule(path, adapter, threads)
    with quiet():  # torch.jit.load warns that TorchScript is deprecated: the user chose it
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location="cpu").eval()
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  registers the int8 ops a quantised program uses
        return ProgramModule(torch.export.load(str(path)).module())


class CastIO(nn.Module):
    """A reduced-precision file called like the float32 model: floating inputs are cast to ``dtype``
    (the graph refuses others), floating outputs back to float32 (what the tasks' postprocessing and
    the parity check compute in)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x: Any) -> Any:
        return cast_floats(self.module(cast_floats(x, self.dtype)), torch.float32)


def cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """``value`` (a tensor, or lists, tuples and dicts of them) with its floating tensors in ``dtype``.

    Example:
        >>> cast_floats({"boxes": torch.zeros(1, 4), "labels": torch.ones(1, dtype=torch.long)}, torch.float16)
        {'boxes': tensor([[0., 0., 0., 0.]], dtype=torch.float16), 'labels': tensor([1])}
    """
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cast_floats(v, dtype) for v in value)
    return value


class ProgramModule(nn.Module):
    """An ExportedProgram's module, callable where code calls ``.eval()`` (which it refuses: an
    exported graph has no train mode)."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "program", program)  # not a submodule: .eval() must not reach it

    def forward(self, *args: Any) -> Any:
        return self.program(*args)


def onnx_opset(path: str | Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
