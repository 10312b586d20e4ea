"""Registry overview for listings (``resnet-tasks backbones``): sizes, features, default weights."""
from __future__ import annotations

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


def weights_rows() -> list[dict]:
    """Every pretrained weights tag per registered architecture: torchvision's (with their ImageNet
    top-1, from torchvision's metadata) and timm's (timm's package carries no accuracy figures).
    Nothing is downloaded."""
    import timm
    from torchvision.models import get_model_weights

    rows = []
    for name in list_backbones():
        spec = get_spec(name)
        for w in get_model_weights(name):
            rows.append({"name": name, "weights": f"torchvision:{w.name}", "source": w.url,
                         "top1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"],
                         "default": f"torchvision:{w.name}" == spec.imagenet})
        for tag in timm.list_pretrained(f"{name}.*"):
            cfg = timm.models.get_pretrained_cfg(tag)
            source = f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else (cfg.url or "timm")
            rows.append({"name": name, "weights": f"timm:{tag}", "source": source, "top1": None, "default": False})
    return rows
