"""torchvision detection: FasterRCNN takes our backbone as is (FPN with P6, or a single C4 map)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from resnet_backbones import create_backbone

H, W = 96, 128
NUM_CLASSES = 3  # background + 2


def small_box_head(channels: int) -> dict:
    """A 64-wide box head instead of the default 1024 (speed); the backbone is untouched."""
    return {"box_head": TwoMLPHead(channels * 7 * 7, 64), "box_predictor": FastRCNNPredictor(64, NUM_CLASSES)}


def fpn_detector() -> FasterRCNN:
    backbone = create_backbone("resnet18", weights=None, fpn=True, fpn_extra="maxpool", fpn_channels=64, freeze_stages=1)
    levels = [f.name for f in backbone.feature_info]
    assert levels == ["p2", "p3", "p4", "p5", "p6"]
    anchors = AnchorGenerator(sizes=tuple((8 * f.stride,) for f in backbone.feature_info),  # one size per level
                              aspect_ratios=((0.5, 1.0, 2.0),) * len(levels))
    pool = MultiScaleRoIAlign(featmap_names=levels[:4], output_size=7, sampling_ratio=2)  # p2…p5
    return FasterRCNN(backbone, None, rpn_anchor_generator=anchors, box_roi_pool=pool,
                      min_size=H, max_size=W, box_score_thresh=0.0, **small_box_head(backbone.out_channels))


def c4_detector() -> FasterRCNN:
    backbone = create_backbone("resnet18", weights=None, out_features=("c4",), freeze_stages=2)
    assert backbone.out_channels == 256  # what FasterRCNN reads
    anchors = AnchorGenerator(sizes=((32, 64, 128),), aspect_ratios=((0.5, 1.0, 2.0),))
    pool = MultiScaleRoIAlign(featmap_names=["c4"], output_size=7, sampling_ratio=2)
    return FasterRCNN(backbone, None, rpn_anchor_generator=anchors, box_roi_pool=pool,
                      min_size=H, max_size=W, box_score_thresh=0.0, **small_box_head(backbone.out_channels))


@pytest.mark.parametrize("build", [fpn_detector, c4_detector], ids=["fpn_p6", "c4"])
def test_faster_rcnn_train_step_and_inference(build):
    torch.manual_seed(0)
    model = build()
    images = [torch.rand(3, H, W), torch.rand(3, H, W)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 5.0, 120.0, 90.0], [0.0, 0.0, 20.0, 20.0]]),
                "labels": torch.tensor([2, 1])}]
    body = getattr(model.backbone, "body", model.backbone)
    model.train()
    # the detector's train() reaches the backbone: its frozen BatchNorm stays in eval mode
    assert not body.bn1.training and not body.layer1.training
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    frozen_before = body.conv1.weight.clone()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    opt.step()
    assert torch.equal(body.conv1.weight, frozen_before)

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det in detections:
        boxes = det["boxes"]
        assert boxes.shape[1] == 4 and len(boxes) > 0  # score threshold 0: random weights still detect
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert ((det["labels"] >= 1) & (det["labels"] < NUM_CLASSES)).all()
        assert ((det["scores"] >= 0) & (det["scores"] <= 1)).all()


def test_resnet50_fpn_detector_builds_from_metadata():
    backbone = create_backbone("resnet50", weights=None, fpn=True)
    model = FasterRCNN(backbone, NUM_CLASSES,
                       rpn_anchor_generator=AnchorGenerator(((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4),
                       box_roi_pool=MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2))
    # the FPN's lateral 1x1 convolutions read 256…2048 from the body's feature_info
    assert [m.in_channels for m in backbone.fpn.fpn.inner_blocks.modules() if isinstance(m, nn.Conv2d)] == \
        [256, 512, 1024, 2048]
    assert model.rpn.head.conv[0][0].in_channels == 256
