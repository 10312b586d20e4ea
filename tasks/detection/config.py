"""Typed settings of ``--task detection`` (no torch imports: the CLI builds its flags from this)."""
from __future__ import annotations

import typing
from dataclasses import dataclass

from .. import register_task
from ..config import TaskConfig, option

HEADS = ("fpn", "c4", "maskrcnn", "retinanet", "fcos")
FPN_EXTRA_FROM = ("p5", "c5")
HEAD_VERSIONS = ("v1", "v2")
# Used instead of the defaults when no --data is given (values the user set still win): the demo
# images are 128 px high with 16–48 px objects, so small anchors, a slim FPN/box head and small RoIs;
# BatchNorm and nothing frozen, since offline the backbone starts from random weights. From random
# init, single-threaded: AP50 0.70 (fpn, 230 CPU-seconds) and 0.66 (c4, 450 CPU-seconds) after 10
# epochs (8 epochs: 0.58 / 0.50; lr 2e-3 or 5e-4 learn worse).
DEMO_DEFAULTS = {"img_size": 128, "anchor_sizes": (16, 32, 64, 128, 256), "fpn_channels": 64, "box_head_dim": 256,
                 "roi_pool_size": 4, "roi_batch_size": 32, "proposals": 50, "norm": "bn", "freeze_stages": 0,
                 "epochs": 10, "batch_size": 8, "lr": 1e-3, "backbone_lr_mult": 1.0}
TRAIN_ONLY = ("all", "predictor")


@register_task("detection", task="tasks.detection.task:DetectionTask", demo_defaults=DEMO_DEFAULTS)
@dataclass
class DetectionConfig(TaskConfig):
    """Faster R-CNN on a registry backbone, with an FPN or a ResNet-C4 box head.

    ``None`` for the proposal and RoI counts means the head's default (see
    ``tasks.detection.heads.HEAD_DEFAULTS``): the C4 box head runs stage 5 once per RoI, so it
    samples and keeps fewer RoIs than the FPN head's small MLP.
    """

    # Detection fine-tuning defaults of torchvision and detectron2 (frozen BN, stem + layer1 frozen);
    # the demo trains from random init, so it uses BatchNorm and trains everything (DEMO_DEFAULTS).
    norm: str = option("frozen_bn", "Backbone normalisation (frozen_bn suits the small detection batches).",
                       ("bn", "frozen_bn"))
    freeze_stages: int = option(1, "0 = train all; N = freeze stem + layer1…N (C4: of the trunk; 4 also "
                                   "freezes stage 5 in the box head).", ge=0, le=4)
    img_size: int = option(800, "Min side images are resized to inside the model, max side ≤ 5/3 of it "
                                "(torchvision/detectron2 use 800; 512 is much faster on a CPU).")
    head: str = option("fpn", "Detector: fpn (Faster R-CNN, P2–P6 FPN, MLP box head); c4 (Faster R-CNN, RPN on "
                       "C4, stage 5 as box head); maskrcnn (fpn + mask branch: needs masks in the COCO JSON, "
                       "reports segm mAP too); retinanet or fcos (one-stage on P3–P7), all torchvision's.", HEADS)
    head_version: str = option("v1", "v2: the design of torchvision's *_v2 detectors (fpn/maskrcnn: BatchNorm in the "
                               "FPN, 2-conv RPN head, 4-conv + 1-FC box head and mask head with BatchNorm; retinanet: "
                               "GroupNorm heads, GIoU loss, needs --fpn-extra-from c5); their weights need it.",
                               HEAD_VERSIONS)
    fpn_extra_from: str = option("p5", "retinanet/fcos: P6 computed from P5 (FCOS, torchvision RetinaNet) or "
                                 "C5 (RetinaNet paper).", FPN_EXTRA_FROM)
    anchor_sizes: tuple[int, ...] = option((32, 64, 128, 256, 512),
                                     "Anchor sizes in pixels of the resized image: one per FPN level P2…P6 "
                                     "(retinanet: base size per P3…P7, × 2^0, 2^⅓, 2^⅔; fcos: unused, the "
                                     "strides); all on C4 for --head c4.", ge=1)
    fpn_channels: int = option(256, "FPN width (also the mask head's with maskrcnn).", ge=1)
    box_head_dim: int = option(1024, "Width of the two-FC box head (--head fpn).", ge=1)
    roi_pool_size: typing.Optional[int] = option(None, "RoIAlign output side (default: fpn 7, c4 14; stage 5 "
                                                 "halves it for c4).", ge=1)
    rpn_batch_size: int = option(64, "Anchors sampled per image for the RPN loss.", ge=1)
    roi_batch_size: typing.Optional[int] = option(None, "RoIs sampled per image for the box head loss "
                                                  "(default: fpn 128, c4 64).", ge=1)
    proposals: typing.Optional[int] = option(None, "Proposals kept per image at inference (default: fpn 300, "
                                             "c4 100).", ge=1)
    images: typing.Optional[str] = option(None, "Image folder (default: DATA/images, else DATA/<split>, else DATA).")
    train_annotations: typing.Optional[str] = option(None, "COCO JSON of the train split "
                                                     "(default: DATA/annotations/train.json).")
    val_annotations: typing.Optional[str] = option(None, "COCO JSON of the val split "
                                                   "(default: DATA/annotations/val.json).")
    val_fraction: float = option(0.2, "Share of the train images held out (seeded) when there is no val JSON.",
                                gt=0, lt=1)
    init_from: typing.Optional[str] = option(None, "Start from a detection checkpoint (best.pt/last.pt) trained on "
                                             "other classes, or torchvision's (torchvision:fasterrcnn_resnet50_fpn, "
                                             "maskrcnn_resnet50_fpn, retinanet_resnet50_fpn, their _v2, or a file "
                                             "saved from one); rows of classes with the same name are kept.")
    train_only: str = option("all", "Train everything (all) or only the box classifier/regressor "
                             "(predictor: TFA few-shot fine-tuning, everything else frozen).", TRAIN_ONLY)
    cosine_classifier: bool = option(False, "Cosine-similarity box classifier (TFA w/cos).")
    cosine_scale: float = option(20.0, "Temperature of the cosine classifier's logits.", gt=0)
    draw_score: float = option(0.5, "Minimum score of the boxes drawn in PNGs (the JSON keeps all).",
                               ge=0, le=1)
