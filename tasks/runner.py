"""What the CLI commands do, with typed arguments: config merging, resume, restore, evaluate, predict.

Only this module and ``cli.py`` read YAML or untyped dicts; everything below gets typed configs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from torch.utils.data import DataLoader

from resnet_backbones import WeightsError, get_spec
from resnet_backbones.weights import resolve_weights

from . import get_config_class, get_task_class, get_task_entry
from .config import ConfigError, TrainConfig, build, find_config, is_preset, load_yaml, split_values
from .data.io import IMAGE_EXTS, DataError
from .engine.checkpoint import inference_weights, load_checkpoint
from .engine.runtime import Runtime
from .engine.trainer import fit

log = logging.getLogger(__name__)
# Settings that may differ when resuming (they do not change the result, only where it runs or what it logs).
RESUME_OVERRIDABLE = {"device", "workers", "log_every", "logger"}
# With random initial weights there is nothing worth protecting: train everything, at one learning rate.
# U-Net's full-resolution image skip: +0.10-0.20 mIoU from random weights with resnet18 (demo, ISBI; not
# with resnet34; docs/benchmarks.md) for 8-12 % more step time; with pretrained encoders smp's own layout.
RANDOM_INIT_DEFAULTS = {"freeze_stages": 0, "norm": "bn", "backbone_lr_mult": 1.0, "full_res_skip": True}


def merge_values(task: str | None, config_file: str | None, explicit: Mapping[str, Any]
                 ) -> tuple[str, dict[str, Any], set[str]]:
    """Preset or YAML file < explicit flags. Returns (task name, values, keys the user set).

    The values of a bundled preset count as defaults, not as set by the user (so, e.g., random
    weights still unfreeze a preset's frozen stages, see :func:`follow_weights`).
    """
    path = find_config(config_file) if config_file else None
    values = load_yaml(path) if path else {}
    file_task = values.pop("task", None)
    if task and file_task and task != file_task:
        raise ConfigError(f"the {task} command contradicts 'task: {file_task}' in {path}")
    user_keys = set(explicit) | (set() if path is None or is_preset(path) else set(values))
    values.update(explicit)
    return task or file_task or "classification", values, user_keys


def apply_demo_defaults(task: str, values: dict[str, Any], user_keys: set[str]) -> None:
    """Without --data, use the task's demo defaults for what the user left unset."""
    if values.get("data") is not None:
        return
    applied = {k: v for k, v in get_task_entry(task).demo_defaults.items() if k not in user_keys}
    values.update(applied)
    if applied:
        log.info("no --data: training on the generated demo set with %s",
                 ", ".join(f"{k}={v}" for k, v in applied.items()))


def check_weights(task_cfg, user_keys: set[str]) -> dict[str, str]:
    """Fail now on weights that cannot be had; default ImageNet weights unavailable offline fall back
    to random init, loudly. Weights the user asked for are never replaced."""
    if task_cfg.weights is None:
        return {}
    try:
        resolve_weights(get_spec(task_cfg.backbone), task_cfg.weights)
        return {}
    except WeightsError as e:
        if "weights" in user_keys:
            raise
        msg = (f"default weights '{task_cfg.weights}' for {task_cfg.backbone} are not available "
               f"({e}). Falling back to RANDOM initialisation; results will be far below pretrained ones. "
               "Pass --weights PATH to use a local file, or --weights none to silence this.")
        log.warning("\n%s\nWARNING: %s\n%s", "!" * 100, msg, "!" * 100)
        task_cfg.weights = None
        return {"weights_fallback": msg}


def follow_weights(train_cfg: TrainConfig, task_cfg, user_keys: set[str]) -> None:
    """Random initial weights: nothing frozen, BatchNorm trains, backbone at the full LR (unless set)."""
    if task_cfg.weights is not None:
        return
    chosen = {}
    for key, value in RANDOM_INIT_DEFAULTS.items():
        cfg = train_cfg if hasattr(train_cfg, key) else task_cfg
        if key not in user_keys and hasattr(cfg, key) and getattr(cfg, key) != value:
            setattr(cfg, key, value)
            chosen[key] = value
    if chosen:
        log.info("random initial weights, so %s (set them to override)",
                 ", ".join(f"{k}={v}" for k, v in chosen.items()))


def check_data(task_cfg) -> None:
    for folder in task_cfg.data_folders():
        if not Path(folder).expanduser().is_dir():
            raise DataError(f"data folder {folder} not found")


def finetune(task: str | None, config_file: str | None, explicit: Mapping[str, Any],
             resume: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Check everything that can be checked without writing (values, device, backbone, data folder,
    weights), then train into a run folder (see :func:`tasks.engine.trainer.fit`)."""
    if resume is not None:
        if config_file:
            raise ConfigError("--resume takes its config from the checkpoint; drop --config")
        return _resume(resume, explicit)
    name, values, user_keys = merge_values(task, config_file, explicit)
    cfg_cls = get_config_class(name)
    apply_demo_defaults(name, values, user_keys)
    train_cfg, task_cfg = split_values(values, cfg_cls)
    Runtime.create(train_cfg.device, train_cfg.amp, train_cfg.channels_last)
    get_spec(task_cfg.backbone)
    check_data(task_cfg)
    notes = check_weights(task_cfg, user_keys)
    follow_weights(train_cfg, task_cfg, user_keys)
    task_obj = get_task_class(name)(task_cfg, seed=train_cfg.seed)
    return fit(task_obj, train_cfg, overwrite=overwrite, notes=notes)


def _resume(resume: str, explicit: Mapping[str, Any]) -> dict[str, Any]:
    ckpt = load_checkpoint(resume, prefer="last")
    if ckpt["task_meta"].get("pruned"):  # its layers have the pruned shapes, which only prune rebuilds
        raise ConfigError(f"{ckpt['path']} holds a pruned model; continue an interrupted pruned fine-tune with "
                          f"`resnet-tasks prune --resume {Path(ckpt['path']).parent}`")
    changed = {k for k, v in explicit.items()
               if k not in RESUME_OVERRIDABLE and k != "out"
               and ckpt["train_config"].get(k, ckpt["task_config"].get(k, v)) != v}
    if changed:
        raise ConfigError(f"cannot change {', '.join(sorted(changed))} when resuming {ckpt['path']}; "
                          "start a new run instead")
    tc = {**ckpt["train_config"], **{k: v for k, v in explicit.items() if k in RESUME_OVERRIDABLE}}
    train_cfg = build(TrainConfig, tc)
    task_cfg = build(get_config_class(ckpt["task"]), ckpt["task_config"])
    task_obj = get_task_class(ckpt["task"])(task_cfg, seed=train_cfg.seed)
    return fit(task_obj, train_cfg, resume=ckpt["path"], notes=ckpt.get("notes"))


def restore(checkpoint: str | Path, device: str = "auto"):
    """(task, model on device, runtime, checkpoint) from a checkpoint alone: no data, no download."""
    ckpt = load_checkpoint(checkpoint, prefer="best")
    cfg = build(get_config_class(ckpt["task"]), {**ckpt["task_config"], "weights": None})
    task = get_task_class(ckpt["task"]).from_checkpoint(cfg, ckpt["task_meta"],
                                                        seed=ckpt["train_config"].get("seed", 0))
    model = task.build_model()
    if ckpt["task_meta"].get("pruned"):  # `resnet-tasks prune`: layers take the shapes of the saved weights
        from .deploy.prune import fit_shapes

        fit_shapes(model, ckpt["model"])
    model.load_state_dict(inference_weights(ckpt))
    rt = Runtime.create(device, None, True)
    rt.prepare_model(model).eval()
    return task, model, rt, ckpt


def evaluate(checkpoint: str, data: str, device: str = "auto", batch_size: int = 16,
             workers: int = 0) -> dict[str, float]:
    task, model, rt, _ = restore(checkpoint, device)
    ds = task.eval_dataset(data)
    if len(ds) == 0:
        raise DataError(f"no labelled samples found in {data}")
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=task.collate_fn())
    return task.evaluate(model, loader, rt)


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files given directly or found (recursively) in given folders."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file())
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"input {p} not found")
    if not paths:
        raise DataError(f"no images found in {', '.join(inputs)}")
    return paths


def predict(checkpoint: str, inputs: list[str], out: str, device: str = "auto") -> list[dict]:
    paths = collect_images(inputs)
    Path(out).mkdir(parents=True, exist_ok=True)  # an unwritable --out fails now, not after the model ran
    task, model, rt, _ = restore(checkpoint, device)
    return task.predict(model, paths, Path(out), rt)
