"""torchvision detectors' weights in our detectors: identical detections from the same state dict,
TFA (--init-from) from such a file, and errors that say what does not fit. Weights are random
(saved from ``weights=None`` models): nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torchvision.models import detection
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from cli import cli
from resnet_backbones import UserError
from tasks.detection.config import DetectionConfig
from tasks.detection.demo import write_demo
from tasks.detection.model import build_detector
from tasks.detection.pretrained import detector_name, is_detector_source, load_detector_weights
from tasks.detection.task import DetectionTask

COCO_LIKE = [f"class{i}" for i in range(1, 91)]


def randomize(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics, and a class the box predictor favours, so that there are detections."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def fasterrcnn_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    randomize(tv)
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.bias[3] = 6.0
    path = tmp_path_factory.mktemp("tv") / "fasterrcnn_resnet50_fpn.pth"
    torch.save(tv.state_dict(), path)
    return path


def test_fasterrcnn_state_dict_gives_identical_detections(fasterrcnn_file):
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=320, max_size=533).eval()
    tv.load_state_dict(torch.load(fasterrcnn_file, weights_only=True))
    ours = build_detector("resnet50", None, "fpn", 91, min_size=320, norm="bn", proposals=1000,
                          roi_batch_size=512, rpn_batch_size=256).eval()
    assert is_detector_source(str(fasterrcnn_file))
    report = load_detector_weights(ours, str(fasterrcnn_file), COCO_LIKE)
    assert report["initialised_afresh"] == []  # 91 classes: the predictor loads as it is
    images = [torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(1)), torch.rand(3, 96, 128)]
    with torch.no_grad():
        want, got = tv(images), ours(images)
    assert sum(len(w["boxes"]) for w in want) > 0
    for w, g in zip(want, got):
        assert torch.equal(w["labels"], g["labels"])
        torch.testing.assert_close(g["boxes"], w["boxes"])
        torch.testing.assert_close(g["scores"], w["scores"])


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn_v2"])
def test_v2_state_dicts_give_identical_detections(name, tmp_path):
    """torchvision's _v2 design: BatchNorm in the FPN, a 2-conv RPN head, a 4-conv + 1-FC box head."""
    torch.manual_seed(0)
    # 100 proposals, not 1000: the 4-conv box head on 1000 RoIs costs ~100 GFLOP
    tv = getattr(detection, name)(weights=None, weights_backbone=None, min_size=256, max_size=427,
                                  rpn_post_nms_top_n_test=100).eval()
    randomize(tv)
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.bias[3] = 6.0
    torch.save(tv.state_dict(), tmp_path / "d.pth")
    head = "maskrcnn" if name.startswith("mask") else "fpn"
    ours = build_detector("resnet50", None, head, 91, min_size=256, norm="bn", head_version="v2", proposals=100,
                          roi_batch_size=512, rpn_batch_size=256).eval()
    assert load_detector_weights(ours, str(tmp_path / "d.pth"), COCO_LIKE)["initialised_afresh"] == []
    images = [torch.rand(3, 100, 140, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        want, got = tv(images)[0], ours(images)[0]
    assert len(want["boxes"]) > 0 and torch.equal(want["labels"], got["labels"])
    for key in ("boxes", "scores") + (("masks",) if head == "maskrcnn" else ()):
        torch.testing.assert_close(got[key], want[key])
    with pytest.raises(UserError, match="does not fit"):  # the v1 design refuses v2 weights, loudly
        load_detector_weights(build_detector("resnet50", None, head, 91, min_size=256), str(tmp_path / "d.pth"),
                              COCO_LIKE)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_retinanet_state_dict_loads_and_matches(version, tmp_path):
    torch.manual_seed(0)
    build = detection.retinanet_resnet50_fpn if version == "v1" else detection.retinanet_resnet50_fpn_v2
    tv = build(weights=None, weights_backbone=None, min_size=256, max_size=427).eval()
    randomize(tv)
    torch.save(tv.state_dict(), tmp_path / "r.pth")
    ours = build_detector("resnet50", None, "retinanet", 91, min_size=256, norm="bn", head_version=version,
                          fpn_extra_from="p5" if version == "v1" else "c5").eval()
    load_detector_weights(ours, str(tmp_path / "r.pth"), COCO_LIKE)
    image = [torch.rand(3, 100, 140)]
    with torch.no_grad():
        want, got = tv(image)[0], ours(image)[0]
    torch.testing.assert_close(got["scores"], want["scores"])
    torch.testing.assert_close(got["boxes"], want["boxes"])


def test_names_and_mismatches(fasterrcnn_file, tmp_path):
    assert detector_name("torchvision:fasterrcnn_resnet50_fpn.COCO_V1") == "fasterrcnn_resnet50_fpn"
    assert detector_name("torchvision:IMAGENET1K_V2") is None and not is_detector_source("imagenet")
    task = DetectionTask(DetectionConfig(weights="torchvision:fasterrcnn_resnet50_fpn_v2", backbone="resnet50"))
    task.categories = [{"id": 1, "name": "a"}]
    with pytest.raises(UserError, match="pass --head fpn --head-version v2"):  # before any download
        task.build_model()
    for head, more in (("c4", {}), ("fcos", {}), ("retinanet", {"fpn_extra_from": "p5"})):
        with pytest.raises(UserError, match="v2"):
            build_detector("resnet18", None, head, 3, min_size=64, head_version="v2", **more)
    small = build_detector("resnet50", None, "fpn", 4, min_size=64, fpn_channels=32)
    with pytest.raises(UserError, match="--fpn-channels 256"):
        load_detector_weights(small, str(fasterrcnn_file), ["a", "b", "c"])
    other_classes = build_detector("resnet50", None, "fpn", 4, min_size=64)
    report = load_detector_weights(other_classes, str(fasterrcnn_file), ["a", "b", "c"])
    # a local file does not name its classes: with another class count the predictor starts afresh
    assert report["initialised_afresh"] == ["roi_heads.box_predictor"]
    sd = torch.load(fasterrcnn_file, weights_only=True)
    assert torch.equal(other_classes.backbone.fpn.fpn.inner_blocks[0][0].weight,
                       sd["backbone.fpn.inner_blocks.0.0.weight"])


def test_tfa_init_from_a_torchvision_detector_file(fasterrcnn_file, tmp_path):
    data = write_demo(tmp_path / "data", seed=1, n_train=3, n_val=2)
    result = CliRunner().invoke(cli, [
        "finetune", "--task", "detection", "--data", str(data), "--init-from", str(fasterrcnn_file),
        "--train-only", "predictor", "--backbone", "resnet50", "--weights", "none", "--norm", "bn",
        "--img-size", "64", "--batch-size", "3", "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "run")],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "initialised afresh (other classes): roi_heads.box_predictor" in result.output
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    sd = torch.load(fasterrcnn_file, weights_only=True)
    # everything but the predictor stayed as loaded (BatchNorm statistics included: frozen, eval mode)
    for k in ("backbone.body.layer3.0.conv1.weight", "rpn.head.cls_logits.weight", "roi_heads.box_head.fc7.weight",
              "backbone.body.layer1.0.bn1.running_mean"):
        assert torch.equal(ckpt["model"][k], sd[k]), k
