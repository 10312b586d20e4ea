"""timm's ``features_only`` contract: the same assertions run on our backbones and on
``timm.create_model(name, features_only=True)``, over the whole registry, plus numerical parity
(same weights → same features) for dilation, other input channels and stochastic-depth rates.
"""
from __future__ import annotations

import logging

import pytest
import timm
import torch
import torchvision
from timm.layers import DropPath
from torch import nn

from resnet_backbones import UserError, create_backbone, list_backbones
from resnet_backbones.features import FeatureListNet

ARCHS = list_backbones()
VARIANTS = {"default": {}, "os8_gray": {"output_stride": 8, "in_chans": 1}}


def check_features_only(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """What code written for timm's features_only models relies on (HF TimmBackbone, smp, mmdet)."""
    fi = model.feature_info
    feats = model(x)
    assert isinstance(feats, (list, tuple))
    chans, reds, names = fi.channels(), fi.reduction(), fi.module_name()
    assert len(feats) == len(chans) == len(reds) == len(names)
    modules = dict(model.named_modules())
    for f, c, r, name, d in zip(feats, chans, reds, names, fi.get_dicts()):
        assert f.shape == (x.shape[0], c, -(-x.shape[2] // r), -(-x.shape[3] // r))  # ceil: padded convs
        assert name in modules, name
        assert (d["num_chs"], d["reduction"], d["module"]) == (c, r, name)
        assert torch.isfinite(f).all()
    assert fi.channels(-1) == chans[-1] and fi.get_dicts(keys=["num_chs"], idx=[0]) == [{"num_chs": chans[0]}]
    return feats


def randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("arch", ARCHS)
def test_features_only_parity_with_timm(arch, variant):
    kwargs = VARIANTS[variant]
    torch.manual_seed(0)
    ours = create_backbone(arch, weights=None, out_indices=(0, 1, 2, 3, 4), out_format="list", **kwargs).eval()
    randomize_bn(ours)
    with torch.device("meta"):  # skip timm's random init: every tensor is overwritten
        theirs = timm.create_model(arch, features_only=True, pretrained=False, **kwargs)
    theirs = theirs.to_empty(device="cpu").eval()
    theirs.load_state_dict(ours.model.state_dict())  # same keys: both are torchvision's layout
    x = torch.randn(2, kwargs.get("in_chans", 3), 48, 48)
    with torch.no_grad():
        got, want = check_features_only(ours, x), check_features_only(theirs, x)
    assert ours.feature_info.channels() == theirs.feature_info.channels()
    assert ours.feature_info.reduction() == theirs.feature_info.reduction()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_out_indices_like_timm():
    ours = create_backbone("resnet50", weights=None, out_indices=(1, 2, 3, 4), out_format="list")
    with torch.device("meta"):
        theirs = timm.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    assert ours.feature_info.channels() == theirs.feature_info.channels() == [256, 512, 1024, 2048]
    assert ours.feature_info.reduction() == theirs.feature_info.reduction() == [4, 8, 16, 32]
    assert ours.feature_info.out_indices == tuple(theirs.feature_info.out_indices) == (1, 2, 3, 4)
    # negative indices count from the end, as timm's; the dict form keeps our names and attributes
    bb = create_backbone("resnet18", weights=None, out_indices=(-2, -1))
    assert [(f.name, f.channels, f.stride, f.module) for f in bb.feature_info] == [
        ("c4", 256, 16, "layer3"), ("c5", 512, 32, "layer4")]
    assert bb.feature_info[0]["num_chs"] == 256 and bb.feature_info.by_name()["c5"].stride == 32


@pytest.mark.parametrize("in_chans", [1, 5])
def test_in_chans_adapts_pretrained_conv1_as_timm(in_chans, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    ours = create_backbone("resnet18", weights=str(path), in_chans=in_chans)
    theirs = timm.create_model("resnet18", pretrained=True, in_chans=in_chans,
                               pretrained_cfg_overlay={"file": str(path), "num_classes": 1000})
    assert ours.conv1.weight.shape == (64, in_chans, 7, 7)
    assert torch.equal(ours.conv1.weight, theirs.conv1.weight)
    assert torch.equal(ours.layer4[1].conv2.weight, theirs.layer4[1].conv2.weight)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_drop_path_rates_follow_timm(arch):
    with torch.device("meta"):
        theirs = timm.create_model(arch, drop_path_rate=0.2)
        ours = create_backbone(arch, weights=None, drop_path_rate=0.2)

    def rates(model):
        return [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0
                for i in range(1, 5) for b in getattr(model, f"layer{i}")]
    assert rates(ours) == pytest.approx(rates(theirs)) and rates(ours)[-1] == pytest.approx(0.2)


def test_drop_path_is_active_in_training_only():
    torch.manual_seed(0)
    bb = create_backbone("resnet18", weights=None, out_features=("c5",), drop_path_rate=0.5)
    plain = create_backbone("resnet18", weights=None, out_features=("c5",))
    plain.load_state_dict(bb.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(bb.eval()(x)["c5"], plain.eval()(x)["c5"])
        assert not torch.equal(bb.train()(x)["c5"], plain.train()(x)["c5"])


def test_cifar_stem_for_small_grayscale_images(tmp_path, caplog):
    bb = create_backbone("resnet18", weights=None, stem="cifar", in_chans=1, out_indices=(0, 1, 2, 3, 4))
    assert bb.conv1.kernel_size == (3, 3) and bb.conv1.stride == (1, 1) and isinstance(bb.maxpool, nn.Identity)
    assert [f.stride for f in bb.feature_info] == [1, 1, 2, 4, 8]
    with torch.no_grad():
        out = bb.eval()(torch.randn(2, 1, 28, 28))
    assert {k: tuple(v.shape[2:]) for k, v in out.items()} == {
        "c1": (28, 28), "c2": (28, 28), "c3": (14, 14), "c4": (7, 7), "c5": (4, 4)}
    # ImageNet weights: everything but the 7x7 conv1 loads, and the log says conv1 stays random
    rgb = torchvision.models.resnet18().state_dict()
    torch.save(rgb, tmp_path / "r18.pth")
    with caplog.at_level(logging.WARNING, logger="resnet_backbones"):
        bb = create_backbone("resnet18", weights=str(tmp_path / "r18.pth"), stem="cifar")
    assert "conv1 keeps its random initialisation" in caplog.text
    assert torch.equal(bb.layer1[0].conv1.weight, rgb["layer1.0.conv1.weight"])
    assert create_backbone("resnet18", weights=None, stem="cifar", output_stride=4).feature_info.reduction() == [
        1, 2, 4, 4]


def test_output_stride_dilates_like_torchvision_deeplab():
    """torchvision's replace_stride_with_dilation is the reference (it refuses BasicBlocks)."""
    torch.manual_seed(0)
    bb = create_backbone("resnet50", weights=None, out_features=("c5",), output_stride=8).eval()
    tv = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    tv.load_state_dict(bb.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        assert torch.equal(bb(x)["c5"], ref)


@pytest.mark.parametrize("kwargs, match", [
    ({"output_stride": 4}, r"output_stride must be one of \(8, 16, 32\)"),
    ({"stem": "cifar", "output_stride": 16}, r"\(2, 4, 8\)"),
    ({"in_chans": 0}, "in_chans"),
    ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ({"stem": "deep"}, "imagenet.*cifar"),
    ({"out_indices": (5,)}, "out_indices"),
    ({"out_indices": (1,), "out_features": ("c2",)}, "not both"),
    ({"out_format": "tuple"}, "dict.*list"),
    ({"fpn": True, "fpn_extra": "p8"}, "p6p7"),
])
def test_invalid_arguments_name_the_valid_values(kwargs, match):
    with pytest.raises(UserError, match=match):
        create_backbone("resnet18", weights=None, **kwargs)


def test_list_output_wraps_fpn_too():
    m = create_backbone("resnet18", weights=None, out_features=("c3", "c4", "c5"), fpn=True, fpn_channels=32,
                        fpn_extra="p6p7", fpn_extra_from="c5", out_format="list").eval()
    assert isinstance(m, FeatureListNet)
    with torch.no_grad():
        feats = check_features_only(m, torch.randn(1, 3, 256, 256))
    assert m.feature_info.reduction() == [8, 16, 32, 64, 128] and len(feats) == 5
    # P6 from C5: its convolution reads C5's 512 channels
    assert m.model.fpn.fpn.extra_blocks.p6.in_channels == 512


def test_backbones_weights_lists_every_tag_with_source_and_top1():
    from click.testing import CliRunner

    from cli import cli

    result = CliRunner().invoke(cli, ["backbones", "--weights"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines()[1:-1] if line.split()[0] == "resnet50"}
    assert "69.76" not in rows["torchvision:IMAGENET1K_V2"] and "80.86" in rows["torchvision:IMAGENET1K_V2"]
    assert "download.pytorch.org" in rows["torchvision:IMAGENET1K_V1"] and "76.13" in rows["torchvision:IMAGENET1K_V1"]
    assert "timm:resnet50.a1_in1k" in rows and "hf-hub:timm/resnet50.a1_in1k" in rows["timm:resnet50.a1_in1k"]
    assert rows["timm:resnet50.a1_in1k"].split()[2:4] == ["81.21", "288"]  # timm's table, at the size it used
    assert {line.split()[0] for line in result.output.splitlines()[1:-1]} == set(ARCHS)


def test_timm_top1_table_covers_the_timm_tags_of_every_architecture():
    import timm

    from resnet_backbones.catalog import timm_top1

    table = timm_top1()
    assert all(50 < top1 < 90 and px in (224, 288) for top1, px in table.values())
    for arch in ARCHS:  # every architecture has figures; tags timm published without any are few
        tags = timm.list_pretrained(f"{arch}.*")
        known = [t for t in tags if t in table]
        assert known and len(known) >= len(tags) - 3, (arch, sorted(set(tags) - set(known)))
