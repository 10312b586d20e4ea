"""FPN neck on top of the backbone: p2…p5 (+ p6), common channels, freezing through the wrapper."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnet_backbones import FPN, BackboneWithFPN, UserError, create_backbone


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("p6", [False, True])
def test_fpn_levels_shapes_and_feature_info(arch, p6):
    torch.manual_seed(0)
    model = create_backbone(arch, weights=None, fpn=True, fpn_extra="maxpool" if p6 else None).eval()
    assert isinstance(model, BackboneWithFPN) and model.out_channels == 256
    want = [("p2", 4), ("p3", 8), ("p4", 16), ("p5", 32)] + ([("p6", 64)] if p6 else [])
    assert [(f.name, f.channels, f.stride) for f in model.feature_info] == [(n, 256, s) for n, s in want]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 128))
    assert list(out) == [n for n, _ in want]
    for f in model.feature_info:
        assert out[f.name].shape == (2, 256, 128 // f.stride, 128 // f.stride), f.name
        assert torch.isfinite(out[f.name]).all()
    if p6:  # P6 is a stride-2 subsample of P5 (Faster R-CNN FPN's RPN level)
        assert torch.equal(out["p6"], F.max_pool2d(out["p5"], kernel_size=1, stride=2))


def test_fpn_channels_and_subset_of_levels():
    model = create_backbone("resnet18", weights=None, out_features=("c3", "c4", "c5"), fpn=True,
                            fpn_channels=64, fpn_extra="maxpool")
    assert [(f.name, f.channels, f.stride) for f in model.feature_info] == [
        ("p3", 64, 8), ("p4", 64, 16), ("p5", 64, 32), ("p6", 64, 64)]
    # the FPN's lateral convolutions are sized from the body's metadata (128/256/512 for resnet18)
    assert [m.in_channels for m in model.fpn.fpn.inner_blocks.modules() if isinstance(m, nn.Conv2d)] == [128, 256, 512]
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p3": (1, 64, 8, 8), "p4": (1, 64, 4, 4), "p5": (1, 64, 2, 2), "p6": (1, 64, 1, 1)}


def test_fpn_on_any_feature_info():
    body = create_backbone("resnet50", weights=None, out_features=("c4", "c5"))
    fpn = FPN(body.feature_info, out_channels=32)
    assert [(f.name, f.channels, f.stride) for f in fpn.feature_info] == [("p4", 32, 16), ("p5", 32, 32)]


@pytest.mark.parametrize("kwargs, match", [({"out_features": ("c1", "c2")}, "c2…c5"),
                                           ({"fpn_channels": 0}, "positive")])
def test_fpn_invalid_arguments(kwargs, match):
    with pytest.raises(UserError, match=match):
        create_backbone("resnet18", weights=None, fpn=True, **kwargs)


def test_freezing_through_the_fpn_wrapper():
    torch.manual_seed(0)
    model = create_backbone("resnet18", weights=None, fpn=True, fpn_extra="maxpool", freeze_stages=2).train()
    assert model.preprocessing is model.body.preprocessing
    assert all(p.requires_grad for p in model.fpn.parameters())
    for name, m in model.body.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training == (not name.startswith(("bn1", "layer1.", "layer2."))), name
    out = model(torch.randn(2, 3, 64, 64))
    sum(v.pow(2).mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
        assert p.requires_grad == (not name.startswith(("body.conv1.", "body.bn1.", "body.layer1.", "body.layer2."))), name
