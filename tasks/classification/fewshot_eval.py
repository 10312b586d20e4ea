"""``resnet-tasks fewshot-eval``: score a classification checkpoint's features on few-shot episodes.

Features are computed once per image (the checkpoint's model and eval transform) and every episode
is scored by ``fewshot.run_episodes``, so the same scoring applies to sampled episodes and to the
published one-shot runs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import ConfigError
from ..data.io import DataError
from .data import ImageFolderDataset, Sample, scan_classes
from .episodes import sample_episodes, usable_groups
from .fewshot import Scoring, auto_tta_shift, run_episodes
from .model import extract_features
from .omniglot_runs import read_runs, runs_as_episodes

log = logging.getLogger(__name__)

PROTOCOLS = ("across-classes", "within-alphabet")


def _restore_classifier(checkpoint: str, device: str):
    from ..runner import restore

    task, model, rt, ckpt = restore(checkpoint, device)
    if ckpt["task"] != "classification":
        raise ConfigError(f"fewshot-eval needs a classification checkpoint, {ckpt['path']} is {ckpt['task']}")
    return task, model, rt


def _features(task, model, rt, samples: list[Sample], classes: list[str], scoring: Scoring
              ) -> tuple[torch.Tensor, torch.Tensor]:
    ds = ImageFolderDataset(samples, classes, task.eval_transform(), channels=task.in_chans)
    shift = scoring.tta_shift
    if shift is None:
        shift = auto_tta_shift(task.cfg.img_size, task.cfg.augment)
    if shift:
        log.info(f"test-time augmentation: features averaged over 3 views (moved ±{shift} px diagonally); "
                 f"--tta-shift 0 turns it off")
    return extract_features(model, DataLoader(ds, batch_size=64, num_workers=0), rt, scoring.levels,
                            scoring.pool, shift)


def _parent(label: str) -> str:
    return label.rsplit("/", 1)[0]


def fewshot_eval(checkpoint: str, data: str, *, ways: int, shots: int, queries: int, episodes: int, seed: int,
                 protocol: str = "across-classes", device: str = "auto", nested_classes: bool | None = None,
                 include_seen: bool = False, scoring: Scoring = Scoring()) -> dict[str, Any]:
    """Seeded N-way K-shot episodes on the classes of ``data``; accuracy and its 95 % CI.

    ``protocol="within-alphabet"`` draws all classes of an episode from one parent folder
    (``alphabet/character``), skipping alphabets with fewer than ``ways`` usable characters.
    Classes whose names the checkpoint was trained on are left out unless ``include_seen``:
    few-shot accuracy is meant for novel classes (e.g. Omniglot's two "background" subsets share
    the Greek and Latin alphabets file for file).
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    task, model, rt = _restore_classifier(checkpoint, device)
    nested = task.cfg.nested_classes if nested_classes is None else nested_classes
    samples = scan_classes(Path(data), nested)
    classes = sorted({s.label for s in samples})
    seen = set(classes) & set(task.classes)
    if seen and not include_seen:
        samples = [s for s in samples if s.label not in seen]
        classes = sorted(set(classes) - seen)
        log.info(f"left out {len(seen)} class(es) of {data} that the model was trained on (e.g. "
                 f"{sorted(seen)[:2]}); --include-seen keeps them")
    if not classes:
        raise DataError(f"every class of {data} was seen in training; pass --include-seen to use them anyway")
    result: dict[str, Any] = {"protocol": protocol, "ways": ways, "shots": shots, "queries": queries,
                              "classes": len(classes)}
    groups = None
    if protocol == "within-alphabet":
        if not nested:
            raise ConfigError(f"--protocol within-alphabet needs classes two folders deep "
                              f"({data}/<alphabet>/<character>/*); pass --nested-classes")
        groups = {i: _parent(c) for i, c in enumerate(classes)}
        index = {c: i for i, c in enumerate(classes)}
        usable = usable_groups([index[s.label] for s in samples], groups, ways, shots + queries)
        result.update(groups=len(set(groups.values())), groups_usable=len(usable))
    feats, labels = _features(task, model, rt, samples, classes, scoring)
    eps = sample_episodes(labels.tolist(), ways, shots, queries, episodes, seed, groups=groups)
    return {**result, **run_episodes(feats, eps, scoring)}


def runs_eval(checkpoint: str, runs_dir: str, device: str = "auto", scoring: Scoring = Scoring()) -> dict[str, Any]:
    """Error of each one-shot run in ``runs_dir`` (Lake et al. layout, see ``omniglot_runs``) and the mean."""
    runs = read_runs(runs_dir)
    task, model, rt = _restore_classifier(checkpoint, device)
    images, episodes = runs_as_episodes(runs)
    # The dataset wants a label per image; the runs' own answers live in the episodes.
    feats, _ = _features(task, model, rt, [Sample(p, "run") for p in images], ["run"], scoring)
    per_run = [{"run": r.name, "ways": len(r.supports), "queries": len(r.queries),
                "error": 1 - run_episodes(feats, [ep], scoring)["accuracy"]} for r, ep in zip(runs, episodes)]
    overall = run_episodes(feats, episodes, scoring)
    return {"runs": per_run, "error": 1 - overall["accuracy"], "ci95": overall["ci95"]}
