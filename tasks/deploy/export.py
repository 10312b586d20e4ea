"""``resnet-tasks export``: a checkpoint → ONNX / TorchScript / ExportedProgram, checked before it is kept.

The file is written under a temporary name, loaded back with its own runtime (ONNX Runtime,
``torch.jit.load``, ``torch.export.load``) and run on real images from the run's validation data;
only when every output is within the tolerance of the (float32) PyTorch model's is it renamed to
``--out`` and its sidecar JSON written. Any failure leaves no file behind. ``--precision fp16``
exports a float16 copy of the model (weights, activations, input and outputs).
"""
from __future__ import annotations

import copy
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_backbones.errors import UserError

from . import formats
from .adapters import FORMATS, LAYOUTS, PRECISIONS, Adapter, NHWCInput, adapter_for
from .sidecar import FORMAT, sidecar_path, write_json_atomic
from .source import Source, load_source

log = logging.getLogger(__name__)


MIN_TRACE_SIDE = 64  # smaller examples make the deepest map 1x1, which torch.export bakes in as a size limit
FP32_TOLERANCE = 1e-4
# float16 keeps 11 significant bits: each rounding errs by up to 2^-11 ≈ 5e-4 of the value, and over a
# ResNet's depth the logits of a float16 resnet18 end up ~1.5e-3 of their magnitude from float32's. An
# absolute 1e-4 would refuse every float16 file; 1 % of the largest output (at least 0.01: logits near
# 0 still carry the rounding of the activations before them) leaves room for deeper models while a
# broken export (wrong weights or layout, an overflow past ±65504) errs by the outputs' own size.
FP16_RELATIVE_TOLERANCE = 1e-2


def real_inputs(src: Source, adapter: Adapter, samples: int, dynamic: bool) -> tuple[Any, list[Any]]:
    """(export example, parity batches): batches of up to ``samples`` validation images. The
    example holds two or more images, so the batch axis cannot be specialised; a batch of one
    checks that it is not. A static export keeps only batches of the example's image size; a
    dynamic one is also checked on an image resized to a size it was not traced on."""
    data = src.data_or_fail("the parity check (it runs the exported model on validation images)")
    ds = adapter.val_dataset(src.task, data)
    if len(ds) == 0:
        raise UserError(f"no validation images in {data} for the parity check; pass --data DIR")
    images = [adapter.image(ds[i]) for i in range(min(samples, len(ds)))]
    if not adapter.batched:
        batches = adapter.batches(images, samples)
        return batches[0], batches
    if not dynamic:
        images = [im for im in images if im.shape == images[0].shape]
    if len(images) == 1:
        images = images * 2
    batches = adapter.batches(images, samples)
    example = batches[0]
    batches.append(example[:1])
    if dynamic:
        h, w = example.shape[-2:]
        scale = max(1.0, MIN_TRACE_SIDE / min(h, w))
        example = resized(example, round(h * scale), round(w * scale))
        batches.append(resized(batches[0][:1], round(h * scale) + 32, round(w * scale) + 48))
    return example, batches


def resized(batch: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(batch.shape[-2:]) == (h, w):
        return batch
    return torch.nn.functional.interpolate(batch, size=(h, w), mode="bilinear", align_corners=False)


def root_cause(e: BaseException) -> str:
    """The first line of the innermost exception: the exporters wrap the real reason in advice."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def max_abs_diff(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """Largest absolute difference over all outputs; a shape mismatch or a differing integer
    output (e.g. a detection label) counts as infinite."""
    worst = 0.0
    for e, g in zip(expected, got, strict=True):
        if e.shape != g.shape:
            return math.inf
        if not e.is_floating_point():
            if not torch.equal(e, g.to(e.dtype)):
                return math.inf
            continue
        if e.numel():
            worst = max(worst, (e.float() - g.float()).abs().max().item())
    return worst


@torch.no_grad()
def parity(reference: nn.Module, exported: nn.Module, batches: list[Any], adapter: Adapter) -> tuple[float, float]:
    """(largest absolute difference between the two models' outputs, largest absolute reference
    output) over ``batches``."""
    diff = scale = 0.0
    for b in batches:
        expected = adapter.flatten(reference(b))
        diff = max(diff, max_abs_diff(expected, adapter.flatten(exported(b))))
        scale = max([scale, *(e.abs().max().item() for e in expected if e.is_floating_point() and e.numel())])
    return diff, scale


def default_tolerance(precision: str, scale: float) -> float:
    """The ``--tolerance`` when none is given, for outputs as large as ``scale``.

    Example:
        >>> default_tolerance("fp32", 7.0), default_tolerance("fp16", 7.0), default_tolerance("fp16", 0.2)
        (0.0001, 0.07, 0.01)
    """
    return FP32_TOLERANCE if precision == "fp32" else FP16_RELATIVE_TOLERANCE * max(1.0, scale)


def in_precision(module: nn.Module, example: Any, precision: str) -> tuple[nn.Module, Any]:
    """(module, example) to trace in ``precision``: a float16 copy, so the float32 model stays the reference."""
    if precision == "fp32":
        return module, example
    dtype = getattr(torch, PRECISIONS[precision])
    return copy.deepcopy(module).to(dtype), formats.cast_floats(example, dtype)


def check_request(adapter: Adapter, fmt: str, layout: str, precision: str, opset: int | None) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt not in adapter.formats:
        raise UserError(f"{adapter.task} models export to {', '.join(adapter.formats)} only, not {fmt}"
                        + (f" ({adapter.why_not})" if adapter.why_not else ""))
    if layout not in adapter.layouts:
        raise UserError(f"--layout {layout} is not available for {adapter.task} (choose {', '.join(adapter.layouts)})")
    if precision not in adapter.precisions:
        raise UserError(f"--precision {precision} is not available for {adapter.task} {fmt} export"
                        + (f" ({adapter.why_not_fp16})" if adapter.why_not_fp16 else ""))
    if opset is not None and fmt != "onnx":
        raise UserError("--opset applies to --format onnx only")


def export(checkpoint: str | Path, fmt: str, out: str | Path, *, dynamic: bool = False, opset: int | None = None,
           layout: str = "nchw", precision: str = "fp32", data: str | Path | None = None, samples: int = 8,
           tolerance: float | None = None) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` and check it; returns the sidecar's content.

    Args:
        fmt: ``onnx``, ``torchscript`` or ``exported-program``.
        dynamic: height and width may vary (the batch size always may, except for detection, which
            takes one image of any size per call).
        opset: ONNX opset (default: the exporter's).
        layout: ``nchw``, or ``nhwc`` for a graph that takes ``(B, H, W, 3)`` images.
        precision: ``fp32``, or ``fp16`` for float16 weights, activations, input and outputs (checked
            against the float32 model).
        data: the data folder for the parity check (default: the run's).
        samples: validation images the exported file is checked on.
        tolerance: largest absolute difference allowed between exported and PyTorch outputs (default:
            1e-4; fp16: :func:`default_tolerance`).
    """
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; pass a file name such as {out / ('model' + formats.SUFFIXES.get(fmt, ''))}")
    if fmt == "exported-program" and out.suffix != ".pt2":
        raise UserError(f"--out {out}: an ExportedProgram file must end in .pt2 (torch.export.load requires it)")
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    src = load_source(checkpoint, data)
    adapter = adapter_for(src.task.name)
    check_request(adapter, fmt, layout, precision, opset)
    example, batches = real_inputs(src, adapter, samples, dynamic)
    module: nn.Module = src.model
    if layout == "nhwc":
        module = NHWCInput(module).eval()
        example, *batches = [b.permute(0, 2, 3, 1).contiguous() for b in (example, *batches)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{formats.SUFFIXES.get(fmt, '')}")
    try:
        try:
            formats.save(fmt, *in_precision(module, example, precision), tmp, adapter, dynamic, opset, layout)
            loaded = formats.load(fmt, tmp, adapter, dtype=PRECISIONS[precision])
            diff, scale = parity(module, loaded, batches, adapter)
        except UserError:
            raise
        except Exception as e:  # an exporter or runtime failure: say which, keep the traceback for --debug
            raise UserError(f"{fmt} export of the {adapter.task} model failed: {root_cause(e)}") from e
        n_images = sum(len(b) for b in batches)
        tolerance = default_tolerance(precision, scale) if tolerance is None else tolerance
        log.debug("parity: max abs difference %.3g over %d validation image(s) in %d batch(es) (tolerance %g)",
                 diff, n_images, len(batches), tolerance)
        if not diff <= tolerance:
            raise UserError(f"parity check failed: the exported model differs from the PyTorch model by up to "
                            f"{diff:.3g} (> --tolerance {tolerance:g}) on {n_images} validation image(s); "
                            f"nothing written")
        info = describe(src, adapter, fmt, out, tmp, example, dynamic, layout,
                        {"max_abs_diff": diff, "tolerance": tolerance, "images": n_images, "batches": len(batches),
                         "reference": "the float32 PyTorch model"}, precision)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    write_json_atomic(sidecar_path(out), info)
    return info


def describe(src: Source, adapter: Adapter, fmt: str, out: Path, written: Path, example: Any, dynamic: bool,
             layout: str, parity_report: dict[str, Any] | None, precision: str = "fp32") -> dict[str, Any]:
    """The sidecar: inputs, outputs, preprocessing and classes for any consumer; the task's config and
    metadata for ``resnet-tasks predict --model``."""
    first = example[0] if not adapter.batched else example
    info: dict[str, Any] = {
        "format": FORMAT, "model_file": out.name, "model_format": fmt, "task": adapter.task,
        "inputs": [{"name": adapter.input_names[0], "dtype": PRECISIONS[precision], "layout": layout.upper(),
                    "shape": adapter.input_shape(first, dynamic, layout)}],
        "outputs": list(adapter.output_names), "dynamic_size": dynamic or not adapter.batched,
        "classes": adapter.classes(src.task), "preprocessing": adapter.preprocessing(src.task),
        **({"parity": parity_report} if parity_report else {}),
        "source": {"checkpoint": src.ckpt["path"], "backbone": src.task.cfg.backbone, "torch": torch.__version__},
        "task_config": src.ckpt["task_config"], "task_meta": src.ckpt["task_meta"]}
    if fmt == "onnx":
        info["opset"] = formats.onnx_opset(written)
    return info
