"""Faster R-CNN (FPN head) vs torchvision's own, on the generated detection demo images."""
from __future__ import annotations

import torch
from torch import nn

from .sides import Plain, Settings, engine_infer, engine_step, first_batch, our_trainer, size_batch
from .timing import Ratio


def torchvision_fpn(arch: str, num_classes: int, size: int, **settings) -> nn.Module:
    """What a torchvision user builds from scratch: ``resnet_fpn_backbone`` with BatchNorm (as
    ``fasterrcnn_resnet50_fpn(weights_backbone=None)`` uses) in ``FasterRCNN``."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from tasks.detection.model import MAX_SIZE_RATIO

    bb = resnet_fpn_backbone(backbone_name=arch, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5)
    return FasterRCNN(bb, num_classes=num_classes, min_size=size, max_size=round(size * MAX_SIZE_RATIO), **settings)


def run(s: Settings, extra: dict) -> list[Ratio]:
    from tasks.detection.heads import HEAD_DEFAULTS
    from tasks.detection.pretrained import our_keys

    arch = "resnet18" if s.quick else "resnet50"
    size, batch = size_batch("detection", s)
    tr = our_trainer("detection", {"backbone": arch, "weights": None, "img_size": size, "batch_size": batch},
                     s, "det")
    images, targets = first_batch(tr)
    n = len(tr.task.categories) + 1
    d = HEAD_DEFAULTS["fpn"]
    ours_settings = dict(rpn_batch_size_per_image=tr.task.cfg.rpn_batch_size, box_batch_size_per_image=d["roi_batch_size"],
                         rpn_post_nms_top_n_train=1000, rpn_post_nms_top_n_test=d["proposals"])

    def loss(m, x, y):
        return sum(m(x, y).values())

    out = []
    for label, settings in (("defaults", {}), ("ref_settings", ours_settings)):
        torch.manual_seed(0)
        tv = torchvision_fpn(arch, n, size, **settings)
        if settings:  # equal settings: torchvision's weights in ours, so both compute the same detections
            tr.model.load_state_dict(our_keys(tv.state_dict()))
        ref = Plain(tv, loss, s)
        note = (f"{arch} FPN, min side {size}, b{batch}: " +
                ("ours' defaults vs torchvision's" if not settings else "torchvision set as ours, same weights"))
        out.append(s.ratio(f"detection/train_step/{label}", engine_step(tr, (images, targets), len(images)),
                           ref.step(images, targets), note=note))
        out.append(s.ratio(f"detection/inference/{label}", engine_infer(tr, images, s), ref.infer(images), note=note))
    return out
