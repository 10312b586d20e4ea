"""U-Net segmentation on ISBI membranes vs ``smp.Unet`` in a plain loop."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .sides import Plain, Settings, engine_infer, engine_step, first_batch, our_trainer
from .timing import Ratio, alternate


def run(s: Settings, extra: dict) -> list[Ratio]:
    import segmentation_models_pytorch as smp

    size, batch = (128, 4) if s.quick else (256, 8)
    base = {"data": str(s.data / "isbi_membrane"), "backbone": "resnet18", "weights": None, "img_size": size,
            "batch_size": batch}
    out = []
    # smp.Unet has no full-resolution skip from the image; everything else is the same layout
    for label, values in (("defaults", {}), ("ref_settings", {"full_res_skip": False})):
        tr = our_trainer("segmentation", {**base, **values}, s, f"seg-{label}")
        b = first_batch(tr)
        ignore = tr.task.labels.ignore_index
        torch.manual_seed(0)
        ref = Plain(smp.Unet("resnet18", encoder_weights=None, classes=tr.task.labels.num_classes),
                    lambda m, x, y: F.cross_entropy(m(x), y, ignore_index=ignore), s,
                    lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01))
        skip = "with" if tr.task.cfg.full_res_skip else "without"
        note = f"resnet18 U-Net {size}px b{batch}, ours {skip} the full-res skip, vs smp.Unet"
        out.append(alternate(f"segmentation/train_step/{label}", engine_step(tr, b, len(b["image"])),
                             ref.step(b["image"], b["mask"]), s.device, rounds=s.rounds, warmup=s.warmup, note=note))
        out.append(alternate(f"segmentation/inference/{label}", engine_infer(tr, b["image"], s),
                             ref.infer(b["image"]), s.device, rounds=s.rounds, warmup=s.warmup, note=note))
    return out
