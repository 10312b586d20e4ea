"""What the CLI commands do, with typed arguments: config merging, resume, restore, evaluate, predict.

Only this module and ``cli.py`` read YAML or untyped dicts; everything below gets typed configs.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader

from resnet_backbones import WeightsError, get_spec
from resnet_backbones.weights import resolve_weights

from . import get_config_class, get_task_class
from .config import ConfigError, TrainConfig, build, load_yaml, split_values
from .data.io import IMAGE_EXTS, DataError
from .engine.checkpoint import load_checkpoint
from .engine.runtime import Runtime
from .engine.trainer import fit

# Settings that may differ when resuming (they do not change the result, only where it runs).
RESUME_OVERRIDABLE = {"device", "workers"}


def merge_values(task: str | None, config_file: str | None, explicit: Mapping[str, Any]
                 ) -> tuple[str, dict[str, Any], set[str]]:
    """YAML file < explicit flags. Returns (task name, values, keys the user set)."""
    values = load_yaml(config_file) if config_file else {}
    file_task = values.pop("task", None)
    if task and file_task and task != file_task:
        raise ConfigError(f"--task {task} contradicts 'task: {file_task}' in {config_file}")
    values.update(explicit)
    return task or file_task or "classification", values, set(values)


def apply_demo_defaults(task: str, values: dict[str, Any], user_keys: set[str]) -> None:
    """Without --data, use the task's demo defaults for what the user left unset."""
    if values.get("data") is not None:
        return
    import importlib

    demo = getattr(importlib.import_module(f"tasks.{task}.config"), "DEMO_DEFAULTS", {})
    applied = {k: v for k, v in demo.items() if k not in user_keys}
    values.update(applied)
    if applied:
        print("no --data: training on the generated demo set with "
              + ", ".join(f"{k}={v}" for k, v in applied.items()))


def check_default_weights(task_cfg, user_keys: set[str]) -> dict[str, str]:
    """Default ImageNet weights that cannot be had offline fall back to random init, loudly.

    Weights the user asked for are never replaced: their error stops the run.
    """
    if "weights" in user_keys or task_cfg.weights is None:
        return {}
    try:
        resolve_weights(get_spec(task_cfg.backbone), task_cfg.weights)
        return {}
    except WeightsError as e:
        msg = (f"WARNING: default weights '{task_cfg.weights}' for {task_cfg.backbone} are not available "
               f"({e}). Falling back to RANDOM initialisation; results will be far below pretrained ones. "
               "Pass --weights PATH to use a local file, or --weights none to silence this.")
        print("\n" + "!" * 100 + "\n" + msg + "\n" + "!" * 100 + "\n")
        task_cfg.weights = None
        return {"weights_fallback": msg}


def finetune(task: str | None, config_file: str | None, explicit: Mapping[str, Any],
             resume: str | None = None) -> dict[str, Any]:
    if resume is not None:
        return _resume(resume, explicit)
    name, values, user_keys = merge_values(task, config_file, explicit)
    cfg_cls = get_config_class(name)
    apply_demo_defaults(name, values, user_keys)
    train_cfg, task_cfg = split_values(values, cfg_cls)
    get_spec(task_cfg.backbone)  # unknown name: fail before anything is written
    notes = check_default_weights(task_cfg, user_keys)
    run_dir = Path(train_cfg.out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    train_cfg.out = str(run_dir)
    task_obj = get_task_class(name)(task_cfg, seed=train_cfg.seed, run_dir=run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"run folder: {run_dir}")
    return fit(task_obj, train_cfg, run_dir, notes=notes)


def _resume(resume: str, explicit: Mapping[str, Any]) -> dict[str, Any]:
    ckpt = load_checkpoint(resume, prefer="last")
    changed = {k for k, v in explicit.items()
               if k not in RESUME_OVERRIDABLE and k != "out"
               and ckpt["train_config"].get(k, ckpt["task_config"].get(k, v)) != v}
    if changed:
        raise ConfigError(f"cannot change {', '.join(sorted(changed))} when resuming {ckpt['path']}; "
                          "start a new run instead")
    tc = {**ckpt["train_config"], **{k: v for k, v in explicit.items() if k in RESUME_OVERRIDABLE}}
    train_cfg = build(TrainConfig, tc)
    task_cfg = build(get_config_class(ckpt["task"]), ckpt["task_config"])
    run_dir = Path(ckpt["path"]).parent
    task_obj = get_task_class(ckpt["task"])(task_cfg, seed=train_cfg.seed, run_dir=run_dir)
    return fit(task_obj, train_cfg, run_dir, resume=ckpt["path"], notes=ckpt.get("notes"))


def restore(checkpoint: str | Path, device: str = "auto"):
    """(task, model on device, runtime, checkpoint) from a checkpoint alone: no data, no download."""
    ckpt = load_checkpoint(checkpoint, prefer="best")
    cfg = build(get_config_class(ckpt["task"]), {**ckpt["task_config"], "weights": None})
    task = get_task_class(ckpt["task"]).from_checkpoint(cfg, ckpt["task_meta"],
                                                        seed=ckpt["train_config"].get("seed", 0))
    model = task.build_model()
    model.load_state_dict(ckpt["model"])
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
    task, model, rt, _ = restore(checkpoint, device)
    paths = collect_images(inputs)
    return task.predict(model, paths, Path(out), rt)
