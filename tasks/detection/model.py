"""Faster R-CNN assembled from a head design's parts: torchvision's RPN, RoIAlign and RoI heads."""
from __future__ import annotations

from typing import Sequence

from torch import nn
from torchvision.models.detection import FasterRCNN

from resnet_backbones import UserError
from resnet_backbones.weights import Preprocessing

from .heads import HEAD_DEFAULTS, HeadParts, build_head_parts
from .heads.predictor import BoxPredictor

MAX_SIZE_RATIO = 1333 / 800  # max side / min side, as torchvision's and detectron2's defaults


class Detector(FasterRCNN):
    """torchvision ``FasterRCNN`` on our parts; images are resized and normalised inside.

    Train mode returns the loss dict, eval mode a list of ``{"boxes", "labels", "scores"}`` in the
    input images' pixel coordinates. Any BatchNorm whose parameters are all frozen stays in eval
    mode during training (frozen stages, a frozen C4 stage 5, TFA's frozen detector).

    Args:
        parts: the head design's modules (:func:`tasks.detection.heads.build_head_parts`).
        num_classes: including the background.
        min_size: resized min side; the max side is capped at ``min_size × 1333/800``.
        rpn_batch_size / roi_batch_size: anchors / RoIs sampled per image for the losses.
        proposals: proposals per image kept at inference (training keeps 1000, as detectron2).
        cosine_scale: ``None`` for a linear classifier, else the cosine classifier's scale.
        preprocessing: mean/std the backbone's weights expect (overrides ``parts.preprocessing``).

    Example:
        >>> import torch
        >>> m = build_detector("resnet18", None, "c4", num_classes=3, min_size=64).eval()
        >>> out = m([torch.rand(3, 64, 80)])
        >>> sorted(out[0])
        ['boxes', 'labels', 'scores']
    """

    def __init__(self, parts: HeadParts, num_classes: int, *, min_size: int, rpn_batch_size: int,
                 roi_batch_size: int, proposals: int, cosine_scale: float | None = None,
                 preprocessing: Preprocessing | None = None) -> None:
        pre = preprocessing or parts.preprocessing
        super().__init__(
            parts.backbone, box_predictor=BoxPredictor(parts.box_dim, num_classes, cosine_scale),
            min_size=min_size, max_size=int(round(min_size * MAX_SIZE_RATIO)),
            image_mean=list(pre.mean), image_std=list(pre.std),
            rpn_anchor_generator=parts.anchor_generator, rpn_head=parts.rpn_head,
            rpn_batch_size_per_image=rpn_batch_size,
            rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=1000,
            rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=proposals,
            box_roi_pool=parts.roi_pool, box_head=parts.box_head, box_batch_size_per_image=roi_batch_size)
        self.preprocessing = pre
        # Names, not a ModuleList: registering the modules twice would duplicate them in state_dict.
        ids = {id(m) for m in parts.pretrained}
        self.pretrained_modules = [name for name, m in self.named_modules() if id(m) in ids]

    @property
    def box_predictor(self) -> BoxPredictor:
        return self.roi_heads.box_predictor

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Parameters initialised from the ImageNet backbone (the engine gives them the lower LR)."""
        return list(dict.fromkeys(p for name in self.pretrained_modules
                                  for p in self.get_submodule(name).parameters()))

    def train(self, mode: bool = True) -> "Detector":
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self

    def train_only_predictor(self) -> None:
        """TFA fine-tuning: freeze everything but the last classifier/regressor."""
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.box_predictor.parameters():
            p.requires_grad_(True)
        self.train(self.training)


def build_detector(backbone: str, weights: str | None, head: str, num_classes: int, *, min_size: int,
                   freeze_stages: int = 0, norm: str = "bn",
                   anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512), roi_pool_size: int | None = None,
                   fpn_channels: int = 256, box_head_dim: int = 1024, rpn_batch_size: int = 64,
                   roi_batch_size: int | None = None, proposals: int | None = None,
                   cosine_scale: float | None = None, preprocessing: Preprocessing | None = None) -> Detector:
    """Backbone from the registry + head design ``"fpn"`` or ``"c4"`` → :class:`Detector`.

    ``None`` for ``roi_pool_size`` / ``roi_batch_size`` / ``proposals`` takes the head's default
    (:data:`HEAD_DEFAULTS`); ``fpn_channels`` and ``box_head_dim`` only concern the FPN head.
    """
    if head not in HEAD_DEFAULTS:
        raise UserError(f"unknown detection head {head!r}; choose one of: {', '.join(HEAD_DEFAULTS)}")
    defaults = HEAD_DEFAULTS[head]
    extra = {"fpn_channels": fpn_channels, "box_head_dim": box_head_dim} if head == "fpn" else {}
    parts = build_head_parts(head, backbone=backbone, weights=weights, freeze_stages=freeze_stages, norm=norm,
                             anchor_sizes=anchor_sizes, roi_pool_size=roi_pool_size or defaults["roi_pool_size"],
                             **extra)
    return Detector(parts, num_classes, min_size=min_size, rpn_batch_size=rpn_batch_size,
                    roi_batch_size=roi_batch_size or defaults["roi_batch_size"],
                    proposals=proposals or defaults["proposals"], cosine_scale=cosine_scale,
                    preprocessing=preprocessing)
