"""``resnet-tasks quantize``: int8 post-training quantisation through PT2E.

The maintained path for CPUs: ``torch.export`` the model, annotate it with torchao's
``X86InductorQuantizer`` (torch 2.14 no longer ships ``torch.ao.quantization``'s PT2E; the eager
``torch.ao`` API is deprecated), calibrate on training images, convert, and lower the int8
patterns to oneDNN kernels (VNNI / AMX) with Inductor's freezing passes, as torchao's
``lower_pt2e_quantized_to_x86`` does. (``torch.compile(..., freezing=True)`` of the int8 graph
fails in torch 2.14 + torchao 0.18: ``onednn.qconv_prepack`` has no fake-tensor kernel.)

- ``static``: convolutions and linear layers in int8, activation ranges from calibration.
- ``dynamic``: the linear layers only, activation ranges computed per batch at run time.

The result is saved as an ExportedProgram (``.pt2``, int8 weights and quantize/dequantize ops)
with the sidecar JSON of ``export``; :func:`load_int8` loads and lowers it again.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_backbones.errors import UserError

from ..engine.runtime import Runtime
from .adapters import Adapter, adapter_for
from .export import describe
from .formats import quiet
from .measure import latency_ms, saved_bytes
from .sidecar import read_sidecar, sidecar_path, write_json_atomic
from .source import load_source

log = logging.getLogger(__name__)
MODES = ("static", "dynamic")


def int8_model(model: nn.Module, mode: str, example: torch.Tensor, calibration: list[torch.Tensor],
               adapter: Adapter) -> nn.Module:
    """The PT2E-quantised ``model`` (a ``GraphModule`` with int8 weights and quantize/dequantize ops).

    ``strict=True``: the non-strict export of torch 2.14 names a module called twice (torchvision's
    shared ``relu`` in every residual block) as one source partition, which the quantizer refuses.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    if mode == "static":
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    else:
        quantizer.set_module_type_qconfig(nn.Linear, xiq.get_default_x86_inductor_quantization_config(is_dynamic=True))
    with quiet(), torch.no_grad():
        graph = torch.export.export(model, (example,), dynamic_shapes=adapter.dynamic_shapes(True), strict=True).module()
        prepared = prepare_pt2e(graph, quantizer)
        for batch in calibration or [example]:  # the weight observers need one pass even for dynamic mode
            prepared(batch)
        return drop_unused(convert_pt2e(prepared))


def drop_unused(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove the float weights the int8 graph no longer reads (else the file keeps both)."""
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph.get_submodule(owner) if owner else graph, attr)
    return graph


def lower_x86(model: torch.fx.GraphModule, example: torch.Tensor, adapter: Adapter) -> nn.Module:
    """The int8 graph with its quantize → conv/linear → dequantize patterns fused into oneDNN int8
    kernels (VNNI / AMX), runnable eagerly. torchao's ``lower_pt2e_quantized_to_x86`` with the batch
    and image size kept dynamic (torchao re-exports with the example's fixed shape)."""
    import torchao.quantization.pt2e.inductor_passes.x86  # noqa: F401  registers the int8 fusion patterns
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

    # Decompose only composite ops (as torchao does): the quantized patterns must stay recognisable.
    table = {k: v for k, v in torch.export.default_decompositions().items() if torch._export.utils._is_cia_op(k)}
    with quiet(), torch.no_grad():
        graph = torch.export.export(model, (example,), dynamic_shapes=adapter.dynamic_shapes(True), strict=True)
        lowered = graph.run_decompositions(table).module()
        for node in list(lowered.graph.nodes):  # the patterns expect permute, not aten.t
            if node.target == torch.ops.aten.t.default:
                with lowered.graph.inserting_before(node):
                    permute = lowered.graph.call_function(torch.ops.aten.permute.default, (node.args[0], [1, 0]))
                node.replace_all_uses_with(permute)
                lowered.graph.erase_node(node)
        lowered.recompile()
        freezing_passes(lowered, (example,))
        constant_fold(lowered)
    return lowered


def load_int8(path: str | Path, example: torch.Tensor) -> nn.Module:
    """A ``.pt2`` written by :func:`quantize`, lowered to oneDNN int8 kernels (traced on ``example``)."""
    meta = read_sidecar(path)
    return lower_x86(torch.export.load(str(path)).module(), example, adapter_for(meta["task"]))


def calibration_batches(src, adapter: Adapter, data: Path, n: int, batch_size: int) -> list[torch.Tensor]:
    """``n`` training images (seeded draw, evaluation preprocessing), batched."""
    ds = adapter.train_dataset(src.task, data)
    if len(ds) == 0:
        raise UserError(f"no training images in {data} to calibrate on")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].tolist()
    batches = adapter.batches([adapter.image(ds[i]) for i in order], batch_size)
    if len(batches[0]) == 1:  # the batch axis is exported dynamic: trace on two or more
        batches[0] = batches[0].repeat(2, 1, 1, 1)
    return batches


def quantize(checkpoint: str | Path, mode: str, out: str | Path, *, calib_images: int = 64,
             data: str | Path | None = None, batch_size: int = 16, lower: bool = True,
             latency_runs: int = 10) -> dict[str, Any]:
    """Quantise ``checkpoint`` to int8, save it to ``out`` (``.pt2``) and measure it against the fp32 model.

    Returns the report: the metric before/after on the validation set, size on disk, and CPU latency
    (median of ``latency_runs``; 0 skips it) at batch 1 and ``batch_size`` (fp32 eager vs int8 lowered to oneDNN kernels, unless ``lower=False``:
    then the exported quantize/dequantize graph, which is slow but is what the file holds).
    """
    out = Path(out)
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if out.suffix != ".pt2":
        raise UserError(f"--out {out}: the quantised model is an ExportedProgram, whose file must end in .pt2")
    src = load_source(checkpoint, data)
    adapter = adapter_for(src.task.name)
    if not adapter.quantizable:
        raise UserError(f"quantize supports classification and segmentation, not {adapter.task}")
    folder = src.data_or_fail("quantize (calibration on training images, accuracy on validation images)")
    calibration = calibration_batches(src, adapter, folder, calib_images, batch_size)
    example = calibration[0]
    qmodel = int8_model(src.model, mode, example, calibration if mode == "static" else [], adapter)
    runnable = lower_x86(qmodel, example, adapter) if lower else qmodel

    rt = Runtime.create("cpu", None, False)
    val = src.loader(adapter.val_dataset(src.task, folder), batch_size)
    metric = adapter.metric_name
    with quiet():
        before, after = src.task.evaluate(src.model, val, rt)[metric], src.task.evaluate(runnable, val, rt)[metric]
    lat = {}
    for b in (1, batch_size) if latency_runs else ():
        x = example[:1].expand(b, *example.shape[1:]).contiguous()
        lat[f"batch{b}"] = {"fp32_eager_ms": latency_ms(src.model, x, iters=latency_runs),
                            "int8_ms": latency_ms(runnable, x, iters=latency_runs)}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.pt2")
    try:
        with quiet():
            # A program keeps its example inputs: two images, not a whole batch, go into the file.
            torch.export.save(torch.export.export(qmodel, (example[:2],), dynamic_shapes=adapter.dynamic_shapes(True)),
                              str(tmp))
        report = {"mode": mode, "metric": metric, "before": before, "after": after,
                  "calibration_images": sum(len(b) for b in calibration) if mode == "static" else 0,
                  "size_mb": {"fp32": saved_bytes(src.model.state_dict()) / 1e6, "int8": tmp.stat().st_size / 1e6},
                  "latency": lat, "lowered_to_onednn": lower, "threads": torch.get_num_threads()}
        info = describe(src, adapter, "exported-program", out, tmp, example, True, "nchw", None)
        info["quantization"] = report
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    write_json_atomic(sidecar_path(out), info)
    return report
