"""ResNetBackbone / create_backbone: shapes, numerics, freezing, validation, describe().

Parametrised over the registry like timm's tests/test_models.py; freezing counts pinned like
torchvision's test_backbone_utils. Inputs are tiny (32–64 px, batch 2) so the file runs in seconds.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FrozenBatchNorm2d

from resnet_backbones import (UserError, WeightsError, create_backbone, describe, framework_equivalents,
                              freeze_table, list_backbones)

ARCHS = list_backbones()
NAMES = ("c1", "c2", "c3", "c4", "c5")
STRIDES = (2, 4, 8, 16, 32)
BASIC = (64, 64, 128, 256, 512)            # resnet18/34
BOTTLENECK = (64, 256, 512, 1024, 2048)    # resnet50 and deeper, ResNeXt, Wide ResNet
# Written out here, not read from the registry, so a wrong registry entry fails.
CHANNELS = {"resnet18": BASIC, "resnet34": BASIC, "resnet50": BOTTLENECK, "resnet101": BOTTLENECK,
            "resnet152": BOTTLENECK, "resnext50_32x4d": BOTTLENECK, "wide_resnet50_2": BOTTLENECK}
# Trainable (tensors, elements) per freeze_stages 0…4, counted by hand from torchvision's layout
# (stem 3 tensors; BasicBlock 6, Bottleneck 9, +3 per downsample), fc excluded.
TRAINABLE = {
    "resnet18": [(60, 11_176_512), (45, 11_019_008), (30, 10_493_440), (15, 8_393_728), (0, 0)],
    "resnet50": [(159, 23_508_032), (126, 23_282_688), (87, 22_063_104), (30, 14_964_736), (0, 0)],
}
BN_TYPES = (nn.BatchNorm2d, FrozenBatchNorm2d)


def frozen_prefixes(n: int) -> tuple[str, ...]:
    """The spec's convention, written independently of the implementation."""
    return () if n == 0 else ("conv1.", "bn1.") + tuple(f"layer{i}." for i in range(1, n + 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics/affine, so eval-mode comparisons would catch a skipped or swapped BN."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN_TYPES):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def test_registry_has_the_imagenet_resnets():
    assert ARCHS[0] == "resnet18"
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= set(ARCHS)
    assert set(ARCHS) <= set(CHANNELS), "pin the channels of the new backbone in CHANNELS"


def test_unknown_backbone_lists_choices():
    with pytest.raises(UserError, match="resnet18.*resnet152"):
        create_backbone("resnet19", weights=None)


@pytest.mark.parametrize("arch", ARCHS)
def test_registry_backbone(arch):
    """Every variant, one build (building dominates the cost), in four parts:
    1. eval: every stage equals torchvision's forward bit for bit, with the same weights;
    2. train: shapes match feature_info, highest resolution first, no NaN;
    3. gradients reach every trainable parameter and no frozen one;
    4. freeze_stages N freezes exactly conv1/bn1 + layer1…N (derived from module names)."""
    torch.manual_seed(0)
    bb = randomize_bn(create_backbone(arch, weights=None, out_features=NAMES, freeze_stages=1))

    # 1. torchvision parity (eval mode, same weights)
    with torch.device("meta"):  # skip torchvision's random init: every trunk tensor is overwritten
        tv = torchvision.models.get_model(arch, weights=None)
    tv = tv.to_empty(device="cpu").eval()
    missing, unexpected = tv.load_state_dict(bb.state_dict(), strict=False)
    # our module layout is torchvision's, key for key; only the (unused) classifier differs
    assert (sorted(missing), unexpected) == (["fc.bias", "fc.weight"], [])
    ref = create_feature_extractor(tv, {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = bb.eval()(x), ref(x)
    for name in ("c2", "c3", "c4", "c5"):
        assert torch.equal(ours[name], theirs[name]), f"{name} differs from torchvision"

    # 2. shapes and metadata (train mode)
    assert [(f.name, f.channels, f.stride) for f in bb.feature_info] == list(zip(NAMES, CHANNELS[arch], STRIDES))
    out = bb.train()(torch.randn(2, 3, 64, 64))
    assert list(out) == list(NAMES)  # highest resolution first
    for f in bb.feature_info:
        assert out[f.name].shape == (2, f.channels, 64 // f.stride, 64 // f.stride), f.name
        assert torch.isfinite(out[f.name]).all(), f.name

    # 3. gradients; squares, not a plain sum: a sum through train-mode BN is constant (zero gradients)
    sum(f.pow(2).mean() for f in out.values()).backward()
    for name, p in bb.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    assert all(p.grad.abs().sum() > 0 for n, p in bb.named_parameters() if n.startswith("layer4.") and n.endswith("weight"))

    # 4. freezing convention
    names = [n for n, _ in bb.named_parameters()]
    for n in range(5):
        bb.freeze(n)
        want = {k for k in names if not k.startswith(frozen_prefixes(n))}
        assert {k for k, p in bb.named_parameters() if p.requires_grad} == want, f"freeze_stages={n}"
    assert {k for k, p in bb.named_parameters() if p.requires_grad} == set()
    bb.freeze(0)  # lowering N unfreezes again (freeze schedules)
    assert all(p.requires_grad for p in bb.parameters())


def test_default_out_features_are_c2_to_c5():
    bb = create_backbone("resnet18", weights=None)
    assert bb.out_features == ("c2", "c3", "c4", "c5")
    with torch.no_grad():
        assert list(bb.eval()(torch.randn(1, 3, 32, 32))) == ["c2", "c3", "c4", "c5"]


def test_out_features_are_returned_high_resolution_first_whatever_the_order_asked():
    bb = create_backbone("resnet18", weights=None, out_features=("c4", "c2"))
    assert [f.name for f in bb.feature_info] == ["c2", "c4"]
    with torch.no_grad():
        assert list(bb.eval()(torch.randn(1, 3, 32, 32))) == ["c2", "c4"]


@pytest.mark.parametrize("arch", sorted(TRAINABLE))
def test_trainable_counts_are_pinned(arch):
    bb = create_backbone(arch, weights=None)
    for n in range(5):
        bb.freeze(n)
        trainable = [p for p in bb.parameters() if p.requires_grad]
        assert (len(trainable), sum(p.numel() for p in trainable)) == TRAINABLE[arch][n], f"freeze_stages={n}"
        table = freeze_table(bb)
        assert [r["stage"] for r in table] == ["stem", "layer1", "layer2", "layer3", "layer4"]
        assert sum(r["trainable"] for r in table) == TRAINABLE[arch][n][1]


@pytest.mark.parametrize("arch, n", [("resnet18", n) for n in range(5)] + [("resnet50", 1), ("resnet50", 3)])
def test_frozen_stages_do_not_change_in_training(arch, n):
    """SGD with momentum + weight decay over *all* parameters, in train mode via a parent module."""
    torch.manual_seed(0)
    bb = create_backbone(arch, weights=None, freeze_stages=n)
    head = nn.Linear(bb.feature_info[-1].channels, 3)
    model = nn.ModuleDict({"backbone": bb, "head": head}).train()  # train() reaches bb through the parent
    frozen = frozen_prefixes(n)
    for name, m in bb.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training == (not (name + ".").startswith(frozen)), name
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(2):  # the second step applies momentum
        opt.zero_grad()
        logits = head(bb(torch.randn(2, 3, 32, 32))["c5"].mean((2, 3)))
        nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
        opt.step()
    after = bb.state_dict()
    for k, v in before.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.startswith(frozen):
            assert torch.equal(after[k], v), f"{k} changed although frozen (freeze_stages={n})"
        else:
            assert not torch.equal(after[k], v), f"{k} did not train (freeze_stages={n})"


@pytest.mark.parametrize("n", [0, 2, 4])
def test_frozen_bn_stays_eval_after_train_eval_cycles(n):
    bb = create_backbone("resnet18", weights=None, freeze_stages=n)
    bb.eval().train().train(True)
    frozen = frozen_prefixes(n)
    for name, m in bb.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training == (not (name + ".").startswith(frozen)), name
    bb.eval()
    assert not any(m.training for m in bb.modules())


def test_truncated_out_features_do_not_build_deeper_stages():
    with torch.device("meta"):
        full = torchvision.models.resnet50()
    bb = create_backbone("resnet50", weights=None, out_features=("c2", "c3"))
    assert not hasattr(bb, "layer3") and not hasattr(bb, "layer4")
    assert not any(k.startswith(("layer3.", "layer4.")) for k in bb.state_dict())
    assert sum(p.numel() for p in bb.parameters()) == sum(
        p.numel() for n, p in full.named_parameters() if not n.startswith(("layer3.", "layer4.", "fc.")))
    with torch.no_grad():
        assert list(bb(torch.randn(1, 3, 32, 32))) == ["c2", "c3"]
    stem_only = create_backbone("resnet18", weights=None, out_features=("c1",))
    assert not any(k.startswith("layer") for k in stem_only.state_dict())
    # freezing more stages than are built freezes what is there
    assert not any(p.requires_grad for p in create_backbone("resnet18", weights=None, out_features=("c3",),
                                                              freeze_stages=4).parameters())


def test_single_output_publishes_out_channels_for_detection():
    assert create_backbone("resnet50", weights=None, out_features=("c4",)).out_channels == 1024
    assert not hasattr(create_backbone("resnet18", weights=None), "out_channels")


def test_split_last_stage_returns_layer4_and_leaves_c4():
    bb = create_backbone("resnet18", weights=None, out_features=("c5",))
    layer4 = bb.split_last_stage()
    assert isinstance(layer4, nn.Sequential) and not hasattr(bb, "layer4")
    assert bb.out_channels == 256
    with torch.no_grad():
        c4 = bb.eval()(torch.randn(1, 3, 64, 64))["c4"]
        assert layer4.eval()(c4).shape == (1, 512, 2, 2)


@pytest.mark.parametrize("bad", [-1, 5, 1.0, True, "2", None])
def test_invalid_freeze_stages_names_the_range(bad):
    with pytest.raises(ValueError, match="0…4") as e:
        create_backbone("resnet18", weights=None, freeze_stages=bad)
    assert isinstance(e.value, UserError)
    with pytest.raises(UserError, match="0…4"):
        create_backbone("resnet18", weights=None).freeze(bad)


@pytest.mark.parametrize("bad", [("c6",), (), ("c2", "c2"), ("p3",), ("layer4",)])
def test_invalid_out_features(bad):
    with pytest.raises(UserError, match="out_features"):
        create_backbone("resnet18", weights=None, out_features=bad)


def test_invalid_norm_names_the_choices():
    with pytest.raises(UserError, match="bn.*frozen_bn"):
        create_backbone("resnet18", weights=None, norm="gn")


@pytest.mark.parametrize("kwargs", [{"out_features": ("c6",)}, {"norm": "gn"}, {"fpn": True, "out_features": ("c1",)}])
def test_bad_arguments_fail_before_any_download(monkeypatch, kwargs):
    """Default weights are "imagenet": a typo must not be reported as (or wait for) a download."""
    def no_download(*a, **k):
        raise AssertionError("tried to download before validating the arguments")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with pytest.raises(UserError) as e:
        create_backbone("resnet18", **kwargs)
    assert not isinstance(e.value, WeightsError)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_frozen_bn_norm(arch):
    torch.manual_seed(0)
    ref = randomize_bn(create_backbone(arch, weights=None)).eval()
    bb = create_backbone(arch, weights=None, norm="frozen_bn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in bb.modules()) == \
        sum(isinstance(m, nn.BatchNorm2d) for m in ref.modules())
    bb.load_state_dict(ref.state_dict())  # FrozenBatchNorm2d drops num_batches_tracked itself
    # BN affine parameters become buffers: only convolutions train
    assert all(p.dim() == 4 for p in bb.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = ref(x)["c5"]
        got_train = bb.train()(x)["c5"]  # train mode uses the stored statistics too
        got_eval = bb.eval()(x)["c5"]
    assert torch.equal(got_train, got_eval)
    # FrozenBN folds BN into scale/shift (other rounding); random-init c5 values reach ~1e2
    torch.testing.assert_close(got_eval, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    assert "frozen (FrozenBatchNorm2d)" in describe(bb)


# freeze_stages → (detectron2 FREEZE_AT, mmdet frozen_stages, torchvision trainable_layers)
EQUIVALENTS = {0: (0, -1, 5), 1: (2, 1, 3), 2: (3, 2, 2), 3: (4, 3, 1), 4: (5, 4, 0)}


@pytest.mark.parametrize("n", range(5))
def test_framework_equivalents(n):
    d2, mmdet, tv = EQUIVALENTS[n]
    assert framework_equivalents(n) == {"detectron2 MODEL.BACKBONE.FREEZE_AT": d2,
                                        "mmdet backbone.frozen_stages": mmdet,
                                        "torchvision trainable_layers": tv}


def test_describe_reports_stages_and_mappings():
    bb = create_backbone("resnet50", weights=None, freeze_stages=3).eval()
    text = describe(bb)
    assert "detectron2 MODEL.BACKBONE.FREEZE_AT = 4" in text
    assert "mmdet backbone.frozen_stages = 3" in text
    assert "torchvision trainable_layers = 1" in text
    rows = {line.split()[0]: line for line in text.splitlines()}
    for stage in ("stem", "layer1", "layer2", "layer3"):
        assert rows[stage].split()[1] == "0" and "eval (running stats)" in rows[stage], rows[stage]
    assert rows["layer4"].split()[1] == "14,964,736" and "train (batch stats)" in rows["layer4"]
    assert rows["total"].split()[1:] == ["14,964,736", "8,543,296"]
    assert "c5 (2048 ch, stride 32)" in text
    assert not bb.training, "describe() must not leave the model in train mode"


def test_describe_accepts_the_fpn_model():
    bb = create_backbone("resnet18", weights=None, fpn=True, freeze_stages=2)
    text = describe(bb)
    assert "p2 (256 ch, stride 4)" in text and "detectron2 MODEL.BACKBONE.FREEZE_AT = 3" in text
    fpn_row = next(line for line in text.splitlines() if line.startswith("fpn"))
    assert fpn_row.split()[1] == f"{sum(p.numel() for p in bb.fpn.parameters()):,}"
