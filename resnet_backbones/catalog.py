"""Registry overview for listings (``resnet-tasks backbones``): sizes, features, default weights."""
from __future__ import annotations

import csv
import functools
from pathlib import Path

import torch

from .backbone import stage_strides
from .registry import get_spec, list_backbones


def _imagenet_label(spec) -> str:
    src = spec.imagenet
    if src.startswith("torchvision:"):
        from torchvision.models import get_model_weights

        w = get_model_weights(spec.name)[src.split(":", 1)[1]]
        return f"{src} (top-1 {w.meta['_metrics']['ImageNet-1K']['acc@1']:.2f}%)"
    return src


def catalog_rows() -> list[dict]:
    """One row per registered backbone; parameters counted on the meta device (no memory, no download)."""
    from .backbone import ResNetBackbone

    rows = []
    for name in list_backbones():
        spec = get_spec(name)
        with torch.device("meta"):
            n = sum(p.numel() for p in ResNetBackbone(spec, ("c5",)).parameters())
        rows.append({"name": name, "block": spec.block_type, "params_m": n / 1e6,
                     "channels": "/".join(map(str, spec.channels)),
                     "strides": "/".join(map(str, stage_strides("imagenet"))),
                     "imagenet": _imagenet_label(spec)})
    return rows


@functools.lru_cache(maxsize=1)
def timm_top1() -> dict[str, tuple[float, int]]:
    """``{"resnet50.a1_in1k": (top-1 %, evaluated at px)}`` from timm's published results table
    (``timm_top1.csv`` beside this file; timm's package carries no accuracy figures)."""
    with open(Path(__file__).with_name("timm_top1.csv"), newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {r["model"]: (float(r["top1"]), int(r["img_size"])) for r in rows}


def weights_rows() -> list[dict]:
    """Every pretrained weights tag per registered architecture with its ImageNet top-1: torchvision's
    from torchvision's metadata (at 224 px), timm's from timm's results table (at the size timm
    measured, ``top1_px``; ``None`` for a tag the table lacks). Nothing is downloaded."""
    import timm
    from torchvision.models import get_model_weights

    rows = []
    for name in list_backbones():
        spec = get_spec(name)
        for w in get_model_weights(name):
            rows.append({"name": name, "weights": f"torchvision:{w.name}", "source": w.url,
                         "top1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"], "top1_px": 224,
                         "default": f"torchvision:{w.name}" == spec.imagenet})
        for tag in timm.list_pretrained(f"{name}.*"):
            cfg = timm.models.get_pretrained_cfg(tag)
            source = f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else (cfg.url or "timm")
            top1, px = timm_top1().get(tag, (None, None))
            rows.append({"name": name, "weights": f"timm:{tag}", "source": source, "top1": top1, "top1_px": px,
                         "default": False})
    return rows
