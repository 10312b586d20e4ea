"""Detectors assembled from a head design's parts, on torchvision's implementations:
Faster R-CNN (FPN or C4 box head), Mask R-CNN, RetinaNet and FCOS."""
from __future__ import annotations

from functools import partial
from typing import Sequence

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead

from resnet_backbones import UserError
from resnet_backbones.weights import Preprocessing

from .config import HEAD_VERSIONS, HEADS
from .heads import HEAD_DEFAULTS, HeadParts, build_head_parts
from .heads.dense import SCORE_THRESH, dense_backbone, fcos_anchors, retinanet_anchors
from .heads.maskrcnn import mask_parts
from .heads.predictor import BoxPredictor

MAX_SIZE_RATIO = 1333 / 800  # max side / min side, as torchvision's and detectron2's defaults


class DetectorMixin:
    """What every detector here adds to torchvision's: the preprocessing of its weights, which
    modules hold pretrained weights (lower LR), which layers are the class-specific predictor
    (TFA), and BatchNorm without trainable parameters kept in eval mode."""

    preprocessing: Preprocessing
    pretrained_modules: list[str]
    predictor_modules: list[str]

    def _set_names(self, pretrained: list[nn.Module], predictors: list[nn.Module]) -> None:
        # Names, not a ModuleList: registering the modules twice would duplicate them in state_dict.
        ids, pids = {id(m) for m in pretrained}, {id(m) for m in predictors}
        self.pretrained_modules = [name for name, m in self.named_modules() if id(m) in ids]
        self.predictor_modules = [name for name, m in self.named_modules() if id(m) in pids]

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Parameters initialised from the ImageNet backbone (the engine gives them the lower LR)."""
        return list(dict.fromkeys(p for name in self.pretrained_modules
                                  for p in self.get_submodule(name).parameters()))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self

    def train_only_predictor(self) -> None:
        """TFA fine-tuning: freeze everything but the last class-specific layers."""
        for p in self.parameters():
            p.requires_grad_(False)
        for name in self.predictor_modules:
            for p in self.get_submodule(name).parameters():
                p.requires_grad_(True)
        self.train(self.training)


def _transform_args(min_size: int, pre: Preprocessing) -> dict:
    return {"min_size": min_size, "max_size": int(round(min_size * MAX_SIZE_RATIO)), "image_mean": list(pre.mean),
            "image_std": list(pre.std)}


class Detector(DetectorMixin, FasterRCNN):
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
        extra: further ``FasterRCNN`` arguments (Mask R-CNN's mask branch).

    Example:
        >>> import torch
        >>> m = build_detector("resnet18", None, "c4", num_classes=3, min_size=64).eval()
        >>> out = m([torch.rand(3, 64, 80)])
        >>> sorted(out[0])
        ['boxes', 'labels', 'scores']
    """

    def __init__(self, parts: HeadParts, num_classes: int, *, min_size: int, rpn_batch_size: int,
                 roi_batch_size: int, proposals: int, cosine_scale: float | None = None,
                 preprocessing: Preprocessing | None = None, extra: dict | None = None) -> None:
        extra = extra or {}
        pre = preprocessing or parts.preprocessing
        super().__init__(
            parts.backbone, box_predictor=BoxPredictor(parts.box_dim, num_classes, cosine_scale),
            **_transform_args(min_size, pre), **extra,
            rpn_anchor_generator=parts.anchor_generator, rpn_head=parts.rpn_head,
            rpn_batch_size_per_image=rpn_batch_size,
            rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=1000,
            rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=proposals,
            box_roi_pool=parts.roi_pool, box_head=parts.box_head, box_batch_size_per_image=roi_batch_size)
        self.preprocessing = pre
        predictors = [self.roi_heads.box_predictor] + ([self.roi_heads.mask_predictor] if "mask_predictor" in extra
                                                      else [])
        self._set_names(parts.pretrained, predictors)

    @property
    def box_predictor(self) -> BoxPredictor:
        return self.roi_heads.box_predictor


class MaskDetector(Detector, MaskRCNN):
    """Mask R-CNN: the FPN Faster R-CNN plus torchvision's mask branch; eval outputs also hold
    ``"masks"`` ``(N, 1, H, W)``, probabilities in the input images' pixels.

    Args:
        mask_width: channels of the mask head's four convolutions (torchvision: 256).
        version: ``"v2"``: BatchNorm in the mask head (``maskrcnn_resnet50_fpn_v2``).
        (the others as :class:`Detector`)
    """

    def __init__(self, parts: HeadParts, num_classes: int, *, mask_width: int, version: str = "v1",
                 **kwargs) -> None:
        masks = mask_parts([n for n in parts.roi_pool.featmap_names], parts.backbone.out_channels, num_classes,
                           mask_width, version)
        # MaskRCNN.__init__ only adds these three to FasterRCNN's; Detector passes them through.
        super().__init__(parts, num_classes, extra={"mask_roi_pool": masks.roi_pool, "mask_head": masks.head,
                                                    "mask_predictor": masks.predictor}, **kwargs)


class DenseDetector(DetectorMixin):
    """Shared by the one-stage detectors: the pretrained trunk and the class-specific layers."""

    def _finish(self, backbone: nn.Module, pre: Preprocessing) -> None:
        self.preprocessing = pre
        heads = self.head
        predictors = [heads.classification_head.cls_logits, heads.regression_head.bbox_reg]
        if hasattr(heads.regression_head, "bbox_ctrness"):
            predictors.append(heads.regression_head.bbox_ctrness)
        self._set_names([backbone.body], predictors)


class RetinaNetDetector(DenseDetector, RetinaNet):
    """torchvision ``RetinaNet`` (focal loss, 9 anchors per location) on our P3–P7 FPN; ``version="v2"``:
    GroupNorm in the heads and a GIoU box loss (``retinanet_resnet50_fpn_v2``)."""

    def __init__(self, backbone: nn.Module, num_classes: int, *, min_size: int, anchor_sizes: Sequence[int],
                 preprocessing: Preprocessing, version: str = "v1") -> None:
        anchors = retinanet_anchors(anchor_sizes, len(backbone.feature_info))
        head = None
        if version == "v2":
            head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes,
                                 norm_layer=partial(nn.GroupNorm, 32))
            head.regression_head._loss_type = "giou"  # as torchvision's builder sets it
        super().__init__(backbone, num_classes, anchor_generator=anchors, score_thresh=SCORE_THRESH, head=head,
                         **_transform_args(min_size, preprocessing))
        self._finish(backbone, preprocessing)


class FCOSDetector(DenseDetector, FCOS):
    """torchvision ``FCOS`` (anchor-free, centre-ness) on our P3–P7 FPN."""

    def __init__(self, backbone: nn.Module, num_classes: int, *, min_size: int, preprocessing: Preprocessing) -> None:
        anchors = fcos_anchors(backbone.feature_info.reduction())
        super().__init__(backbone, num_classes, anchor_generator=anchors, score_thresh=SCORE_THRESH,
                         **_transform_args(min_size, preprocessing))
        self._finish(backbone, preprocessing)


def build_detector(backbone: str, weights: str | None, head: str, num_classes: int, *, min_size: int,
                   freeze_stages: int = 0, norm: str = "bn",
                   anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512), roi_pool_size: int | None = None,
                   fpn_channels: int = 256, box_head_dim: int = 1024, rpn_batch_size: int = 64,
                   roi_batch_size: int | None = None, proposals: int | None = None,
                   cosine_scale: float | None = None, preprocessing: Preprocessing | None = None,
                   fpn_extra_from: str = "p5", head_version: str = "v1") -> DetectorMixin:
    """Backbone from the registry + head design (:data:`HEADS`) → a torchvision detector.

    ``"fpn"``/``"c4"``: Faster R-CNN; ``"maskrcnn"``: Mask R-CNN on the FPN design (mask head
    ``fpn_channels`` wide); ``"retinanet"``/``"fcos"``: one-stage on P3–P7 (``fpn_extra_from``:
    where P6 comes from). ``None`` for ``roi_pool_size`` / ``roi_batch_size`` / ``proposals``
    takes the head's default (:data:`HEAD_DEFAULTS`); the RoI settings concern two-stage heads.
    ``head_version="v2"``: the design of torchvision's ``*_v2`` detectors (fpn, maskrcnn, retinanet).

    Example:
        >>> import torch
        >>> m = build_detector("resnet18", None, "fcos", num_classes=3, min_size=128, fpn_channels=32).eval()
        >>> sorted(m([torch.rand(3, 128, 160)])[0])
        ['boxes', 'labels', 'scores']
    """
    if head not in HEADS:
        raise UserError(f"unknown detection head {head!r}; choose one of: {', '.join(HEADS)}")
    if head_version not in HEAD_VERSIONS:
        raise UserError(f"unknown head version {head_version!r}; choose one of: {', '.join(HEAD_VERSIONS)}")
    if head_version == "v2" and head in ("c4", "fcos"):
        raise UserError(f"--head {head} has no v2 design (torchvision's _v2 detectors are fpn, maskrcnn and "
                        "retinanet); drop --head-version v2")
    if head_version == "v2" and head == "retinanet" and fpn_extra_from != "c5":
        raise UserError("--head retinanet --head-version v2 computes P6 from C5, as torchvision's "
                        "retinanet_resnet50_fpn_v2: add --fpn-extra-from c5")
    if head in ("retinanet", "fcos"):
        net = dense_backbone(backbone, weights, freeze_stages, norm, fpn_channels, fpn_extra_from)
        pre = preprocessing or net.preprocessing
        if head == "retinanet":
            return RetinaNetDetector(net, num_classes, min_size=min_size, anchor_sizes=anchor_sizes, preprocessing=pre,
                                     version=head_version)
        return FCOSDetector(net, num_classes, min_size=min_size, preprocessing=pre)
    defaults = HEAD_DEFAULTS[head]
    extra = ({"fpn_channels": fpn_channels, "box_head_dim": box_head_dim, "version": head_version}
             if head in ("fpn", "maskrcnn") else {})
    parts = build_head_parts("c4" if head == "c4" else "fpn", backbone=backbone, weights=weights,
                             freeze_stages=freeze_stages, norm=norm, anchor_sizes=anchor_sizes,
                             roi_pool_size=roi_pool_size or defaults["roi_pool_size"], **extra)
    args = dict(min_size=min_size, rpn_batch_size=rpn_batch_size,
                roi_batch_size=roi_batch_size or defaults["roi_batch_size"],
                proposals=proposals or defaults["proposals"], cosine_scale=cosine_scale, preprocessing=preprocessing)
    if head == "maskrcnn":
        return MaskDetector(parts, num_classes, mask_width=fpn_channels, version=head_version, **args)
    return Detector(parts, num_classes, **args)
