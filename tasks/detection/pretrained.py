"""Whole-detector weights from torchvision (``torchvision:fasterrcnn_resnet50_fpn`` …) or a local file
saved from one, loaded into our detectors: few-shot detection can start from a detector that
already knows objects.

torchvision's keys equal ours but for the FPN, which sits one module deeper here
(``backbone.fpn.fpn.…``). Everything loads or is reported: a trunk/neck/head that does not fit is an
error naming the settings to pass; class-specific layers move row by row by class name when the
source's class names are known (torchvision's COCO names), load as they are when the class count
matches, and are otherwise initialised afresh, which the log says.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_backbones import UserError, WeightsError

from .heads.predictor import transfer_rows

log = logging.getLogger(__name__)

# torchvision builder → our (--head, --head-version); the architecture settings they were built with.
DETECTORS = {"fasterrcnn_resnet50_fpn": ("fpn", "v1"), "maskrcnn_resnet50_fpn": ("maskrcnn", "v1"),
             "retinanet_resnet50_fpn": ("retinanet", "v1"), "fasterrcnn_resnet50_fpn_v2": ("fpn", "v2"),
             "maskrcnn_resnet50_fpn_v2": ("maskrcnn", "v2"), "retinanet_resnet50_fpn_v2": ("retinanet", "v2")}
TORCHVISION_ARCH = {"backbone": "resnet50", "fpn_channels": 256, "box_head_dim": 1024, "roi_pool_size": 7,
                    "anchor_sizes": (32, 64, 128, 256, 512), "fpn_extra_from": "p5"}
_DETECTOR_KEYS = ("rpn.", "roi_heads.", "head.")


def detector_name(weights: str | None) -> str | None:
    """``"fasterrcnn_resnet50_fpn"`` for ``weights="torchvision:fasterrcnn_resnet50_fpn[.TAG]"``, else None."""
    if not weights or not str(weights).startswith("torchvision:"):
        return None
    from torchvision.models import detection, list_models

    name = str(weights).split(":", 1)[1].split(".", 1)[0]
    return name if name in list_models(module=detection) else None


def is_detector_source(weights: str | None) -> bool:
    """A torchvision detector's weights or a local file holding a whole detector (not just a trunk)."""
    if detector_name(weights) is not None:
        return True
    if not weights or not Path(weights).expanduser().is_file():
        return False
    from resnet_backbones.weights import read_state_dict

    return is_detector_state(read_state_dict(weights, strip=False))


def is_detector_state(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("backbone.body.") for k in sd) and any(k.startswith(_DETECTOR_KEYS) for k in sd)


def fetch(weights: str) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """(state dict in torchvision's keys, the source's class names or None) of a detector source."""
    name = detector_name(weights)
    if name is None:
        from resnet_backbones.weights import read_state_dict

        return read_state_dict(weights, strip=False), None
    if name not in DETECTORS:
        raise WeightsError(f"torchvision detector {name} has another architecture than ours (another trunk or "
                           f"head); supported: {', '.join(f'torchvision:{n}' for n in DETECTORS)}")
    from torchvision.models import get_model_weights

    from resnet_backbones.weights import download_torchvision

    tag = str(weights).split(":", 1)[1].partition(".")[2] or "DEFAULT"
    try:
        entry = get_model_weights(name)[tag]
    except KeyError:
        raise WeightsError(f"torchvision has no weights {tag!r} for {name}; known: "
                           f"{', '.join(e.name for e in get_model_weights(name))}") from None
    sd = download_torchvision(entry, str(weights))
    return sd, [c for c in entry.meta["categories"][1:]]  # [0] is torchvision's "__background__"


def our_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {("backbone.fpn.fpn." + k[len("backbone.fpn."):]) if k.startswith("backbone.fpn.") else k: v
            for k, v in sd.items()}


def load_detector_weights(model: nn.Module, weights: str, class_names: list[str]) -> dict[str, Any]:
    """Load a torchvision-layout detector's weights into ``model``; return what happened (also logged)."""
    sd, src_names = fetch(weights)
    if not is_detector_state(sd):
        raise WeightsError(f"{weights} holds no detector (no backbone.body.* with rpn.*/roi_heads.*/head.* keys)")
    sd = our_keys(sd)
    own = model.state_dict()
    predictors = tuple(f"{n}." for n in model.predictor_modules)
    body = {k: v for k, v in sd.items() if not k.startswith(predictors)}
    missing = [k for k in own if k not in body and not k.startswith(predictors)
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in body if k not in own and not k.endswith("num_batches_tracked")]
    wrong = [k for k in body if k in own and body[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        hint = ", ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                         for k, v in TORCHVISION_ARCH.items())
        raise UserError(f"{weights} does not fit this detector: {len(missing)} missing, {len(unexpected)} unexpected, "
                        f"{len(wrong)} of another shape (e.g. {(missing + unexpected + wrong)[:3]}); torchvision's "
                        f"detectors need {hint} and --norm frozen_bn or bn (their _v2: --head-version v2, "
                        f"retinanet's with --fpn-extra-from c5)")
    model.load_state_dict(body, strict=False)
    kept, fresh = [], []
    for name in model.predictor_modules:
        part = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")}
        mine = {k[len(name) + 1:]: v for k, v in own.items() if k.startswith(name + ".")}
        if name == "roi_heads.box_predictor" and src_names is not None:
            kept = transfer_rows(model.box_predictor, part, src_names, class_names)
        elif part.keys() == mine.keys() and all(part[k].shape == mine[k].shape for k in part):
            model.get_submodule(name).load_state_dict(part)
        else:
            fresh.append(name)
    report = {"source": weights, "class_rows_kept": kept, "initialised_afresh": fresh}
    log.info(f"{weights}: detector weights loaded (backbone, FPN, RPN/heads)"
             + (f"; class rows kept for {kept}" if kept else "")
             + (f"; class-specific layers initialised afresh (other classes): {', '.join(fresh)}" if fresh else ""))
    return report
