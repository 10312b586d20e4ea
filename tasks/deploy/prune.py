"""``resnet-tasks prune``: remove whole channels (torch-pruning), optionally fine-tune through ``fit``.

torch-pruning traces the model's dependency graph, so channels are removed together wherever they
are coupled (a residual sum, a U-Net concatenation, the BatchNorm after a convolution), by the L2
magnitude of each coupled group. The pruned model is an ordinary resnet-tasks checkpoint whose
``task_meta["pruned"]`` says so: loading builds the usual model and gives each layer the shape of
its saved weights (:func:`fit_shapes`), so ``evaluate``, ``predict`` and ``export`` read it as is.
An interrupted fine-tune continues exactly with ``prune --resume RUN_DIR`` (:func:`resume`).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from resnet_backbones.errors import UserError

from .. import get_config_class, get_task_class
from ..base import Task
from ..config import TrainConfig, build
from ..engine.callbacks import Callback
from ..engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint, strip_training_state
from ..engine.rundir import RunDir
from ..engine.runtime import Runtime
from ..engine.trainer import fit
from .adapters import Adapter, adapter_for
from .measure import count_flops, count_params, latency_ms
from .sidecar import write_json_atomic
from .source import Source, load_source

log = logging.getLogger(__name__)
PRUNED = "pruned"  # task_meta key
REPORT_NOTE = "prune_report"  # checkpoint notes key: the report before fine-tuning, for a resumed run


def fit_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every layer the shape of its weights in ``state`` (a pruned model's), so that
    ``load_state_dict`` fits; the layers' size attributes follow (``in_channels``, ``num_features``…)."""
    for prefix, module in model.named_modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            saved = state.get(f"{prefix}.{name}" if prefix else name)
            if saved is None or saved.shape == tensor.shape:
                continue
            new = torch.empty(saved.shape, dtype=tensor.dtype)
            if isinstance(tensor, nn.Parameter):
                setattr(module, name, nn.Parameter(new, requires_grad=tensor.requires_grad))
            else:
                module._buffers[name] = new
        if isinstance(module, nn.Conv2d):
            module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1] * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = module.running_mean.shape[0]


def prune_channels(model: nn.Module, example: torch.Tensor, keep: float, keep_whole: list[nn.Module]) -> nn.Module:
    """Remove ``1 - keep`` of the channels of every prunable layer of ``model`` (in place), by the
    L2 magnitude of each group of coupled channels; ``keep_whole`` (the output layers) keep theirs."""
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=1 - keep, ignored_layers=keep_whole)
    pruner.step()
    return model


def output_layers(task: str, model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels are the task's classes: never pruned."""
    return [model.head] if task == "classification" else [model.segmentation_head]


def pruned_task(task: Task, state: dict[str, torch.Tensor], info: dict[str, Any]) -> Task:
    """``task`` whose model is the pruned one (for :func:`fit`): same data, loss and metrics; its
    checkpoints record ``info`` under ``task_meta["pruned"]``."""
    base = type(task)

    class PrunedTask(base):
        def build_model(self) -> nn.Module:
            model = super().build_model()
            fit_shapes(model, state)
            model.load_state_dict(state)
            return model

        def checkpoint_meta(self) -> dict[str, Any]:
            return {**super().checkpoint_meta(), PRUNED: info}

    PrunedTask.__name__ = PrunedTask.__qualname__ = f"Pruned{base.__name__}"
    cfg = dataclasses.replace(task.cfg, weights=None)  # every weight comes from the pruned state
    return PrunedTask(cfg, seed=task.seed)


def measure(src: Source, model: nn.Module, adapter: Adapter, example: torch.Tensor, val) -> dict[str, Any]:
    with torch.no_grad():
        metric = src.task.evaluate(model.eval(), val, Runtime.create("cpu", None, False))[adapter.metric_name]
    return {"params": count_params(model), "flops": count_flops(model, example[:1]),
            "latency_ms_batch1": latency_ms(model, example[:1]), adapter.metric_name: metric}


def prune(checkpoint: str | Path, keep: float, out: str | Path, *, finetune_epochs: int = 0,
          data: str | Path | None = None, overwrite: bool = False, callbacks: Iterable[Callback] = ()
          ) -> dict[str, Any]:
    """Prune ``checkpoint`` to ``keep`` of its channels into run folder ``out`` (``best.pt``), fine-tune
    it ``finetune_epochs`` epochs through the engine if asked (with ``callbacks``); returns (and writes
    to ``out/prune_report.json``) params, FLOPs, latency and the metric before and after. An
    interrupted fine-tune continues with :func:`resume`."""
    if not 0 < keep < 1:
        raise UserError(f"--keep must be in (0, 1): the share of channels kept, got {keep}")
    out = Path(out)
    RunDir(out, overwrite=overwrite)  # refuse a taken folder before any work
    src = load_source(checkpoint, data)
    adapter = adapter_for(src.task.name)
    if not adapter.prunable:
        raise UserError(f"prune supports classification and segmentation, not {adapter.task}")
    if src.ckpt["task_meta"].get(PRUNED):
        raise UserError(f"{src.ckpt['path']} is pruned already; prune the original checkpoint with a smaller --keep")
    folder = src.data_or_fail("prune (it measures the metric on validation images)")
    val = src.loader(adapter.val_dataset(src.task, folder), 16)
    example = adapter.image(next(iter(val)))  # a validation batch
    report: dict[str, Any] = {"keep": keep, "source": str(Path(src.ckpt["path"]).resolve()),
                              "metric": adapter.metric_name, "before": measure(src, src.model, adapter, example, val)}
    import torch_pruning as tp

    model = prune_channels(src.model, example[:2] if len(example) > 1 else example.repeat(2, 1, 1, 1), keep,
                           output_layers(adapter.task, src.model))
    report["pruned"] = measure(src, model, adapter, example, val)
    report["flops_ratio"] = report["pruned"]["flops"] / report["before"]["flops"]
    info = {"keep": keep, "criterion": "group L2 magnitude", "library": f"torch-pruning {tp.__version__}"}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    meta = {**src.ckpt["task_meta"], PRUNED: info}
    if finetune_epochs:
        train_cfg = build(TrainConfig, {**src.ckpt["train_config"], "epochs": finetune_epochs, "out": str(out),
                                        "warmup_epochs": 0})
        task = pruned_task(src.task, state, info)
        task.cfg = dataclasses.replace(task.cfg, data=_data_value(src, folder))
        report["finetune_epochs"] = finetune_epochs
        # the report so far rides in the checkpoints: a resumed fine-tune finishes it without the source
        fit(task, train_cfg, callbacks, overwrite=overwrite, notes={REPORT_NOTE: report})
        return finish_report(report, out, folder)
    out.mkdir(parents=True, exist_ok=True)
    payload = {k: v for k, v in strip_training_state(src.ckpt).items() if k not in ("path", "format")}
    # the source's EMA weights (--ema-decay) keep the unpruned shapes: the pruned model replaces them
    save_checkpoint(out / "best.pt", {**payload, "model": state, "model_ema": None, "task_meta": meta})
    write_json_atomic(out / "prune_report.json", report)
    return report


def resume(run: str | Path, *, checkpoint: str | Path | None = None, keep: float | None = None,
           finetune_epochs: int | None = None, data: str | Path | None = None, out: str | Path | None = None,
           callbacks: Iterable[Callback] = ()) -> dict[str, Any]:
    """Continue the interrupted fine-tune of :func:`prune` in run folder ``run`` exactly (as
    ``finetune --resume``: same weights, optimiser, RNGs, batches), then finish its report. The other
    arguments, where given, must be what the run was started with (a rerun of the same command
    line with ``--resume`` added); a finished run is measured again, not trained."""
    ckpt = load_checkpoint(run, prefer="last")
    report = (ckpt.get("notes") or {}).get(REPORT_NOTE)
    if report is None:
        raise UserError(f"{ckpt['path']} is not a pruned fine-tune (`resnet-tasks prune --finetune-epochs N` "
                        "writes one); nothing to resume")
    folder, recorded_data = Path(ckpt["path"]).parent, Path(_first(ckpt["task_config"]["data"]))
    given = {"--checkpoint": checkpoint and find_checkpoint(checkpoint, "best").resolve(), "--keep": keep,
             "--finetune-epochs": finetune_epochs, "--data": data and Path(data).expanduser().resolve(),
             "--out": out and Path(out).resolve()}
    recorded = {"--checkpoint": Path(report["source"]), "--keep": report["keep"],
                "--finetune-epochs": report["finetune_epochs"], "--data": recorded_data.resolve(),
                "--out": folder.resolve()}
    changed = [flag for flag, value in given.items() if value is not None and value != recorded[flag]]
    if changed:
        raise UserError(f"cannot change {', '.join(changed)} when resuming {folder}; start again with --overwrite "
                        "or another --out")
    train_cfg = build(TrainConfig, ckpt["train_config"])
    base = get_task_class(ckpt["task"])(build(get_config_class(ckpt["task"]), ckpt["task_config"]), seed=train_cfg.seed)
    task = pruned_task(base, ckpt["model"], ckpt["task_meta"][PRUNED])  # the layers take the saved weights' shapes
    fit(task, train_cfg, callbacks, resume=ckpt["path"], notes=ckpt["notes"])
    return finish_report(report, folder, recorded_data)


def finish_report(report: dict[str, Any], out: Path, data: Path) -> dict[str, Any]:
    """``report`` with the fine-tuned model (``out/best.pt``) measured, written to ``out/prune_report.json``."""
    fine = load_source(out / "best.pt", data)
    adapter = adapter_for(fine.task.name)
    val = fine.loader(adapter.val_dataset(fine.task, data), 16)
    report = {**report, "finetuned": measure(fine, fine.model, adapter, adapter.image(next(iter(val))), val)}
    write_json_atomic(out / "prune_report.json", report)
    return report


def _first(data: Any) -> str:
    return data[0] if isinstance(data, (list, tuple)) else data


def _data_value(src: Source, folder: Path) -> Any:
    """The task config's ``data`` pointing at ``folder`` (classification takes a list of folders)."""
    return [str(folder)] if isinstance(src.ckpt["task_config"].get("data"), list) or src.task.name == "classification" \
        else str(folder)
