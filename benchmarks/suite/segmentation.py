"""U-Net segmentation on ISBI membranes vs ``smp.Unet`` in a plain loop."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .sides import (Plain, Settings, engine_infer, engine_step, first_batch, our_trainer, size_batch,
                    weights_file)
from .timing import Ratio


def run(s: Settings, extra: dict) -> list[Ratio]:
    import segmentation_models_pytorch as smp

    size, batch = size_batch("segmentation", s)
    base = {"data": str(s.data / "isbi_membrane"), "backbone": "resnet18", "weights": None, "img_size": size,
            "batch_size": batch}
    out = []
    # Ours with the defaults of the default (pretrained) weights: smp.Unet's layout. With random weights
    # ours adds a full-resolution skip from the image (an accuracy trade, docs/benchmarks.md); the
    # reference's settings: random weights, no skip.
    for label, values in (("defaults", {"weights": weights_file("resnet18", s)}), ("random_init", {}),
                          ("ref_settings", {"full_res_skip": False})):
        tr = our_trainer("segmentation", {**base, **values}, s, f"seg-{label}")
        b = first_batch(tr)
        ignore = tr.task.labels.ignore_index
        torch.manual_seed(0)
        ref = Plain(smp.Unet("resnet18", encoder_weights=None, classes=tr.task.labels.num_classes),
                    lambda m, x, y: F.cross_entropy(m(x), y, ignore_index=ignore), s,
                    lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01))
        skip = "with" if tr.task.cfg.full_res_skip else "without"
        init = "pretrained-weights defaults" if label == "defaults" else "random init"
        note = f"resnet18 U-Net {size}px b{batch}, ours ({init}) {skip} the full-res skip, vs smp.Unet"
        out.append(s.ratio(f"segmentation/train_step/{label}", engine_step(tr, b, len(b["image"])),
                           ref.step(b["image"], b["mask"]), note=note))
        out.append(s.ratio(f"segmentation/inference/{label}", engine_infer(tr, b["image"], s),
                           ref.infer(b["image"]), note=note))
    return out
