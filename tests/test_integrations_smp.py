"""segmentation_models_pytorch: ``rt-<name>`` encoders in Unet / FPN / DeepLabV3Plus."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

smp = pytest.importorskip("segmentation_models_pytorch")

import resnet_backbones.integrations.smp as rt_smp  # noqa: E402  (registers the rt- encoders)
from resnet_backbones import WeightsError, list_backbones  # noqa: E402

DECODERS = [smp.Unet, smp.FPN, smp.DeepLabV3Plus]
# The encoders' channel lists (input first), pinned: smp's decoders must size themselves from them.
OUT_CHANNELS = {"resnet18": [3, 64, 64, 128, 256, 512], "resnet50": [3, 64, 256, 512, 1024, 2048]}


def test_every_registry_backbone_is_registered():
    from segmentation_models_pytorch.encoders import encoders

    assert {f"rt-{n}" for n in list_backbones()} <= set(encoders)
    assert rt_smp.register_smp_encoders() == [f"rt-{n}" for n in list_backbones()]  # idempotent


@pytest.mark.parametrize("arch", sorted(OUT_CHANNELS))
@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.__name__)
def test_decoders_build_and_run(arch, decoder):
    torch.manual_seed(0)
    model = decoder(f"rt-{arch}", encoder_weights=None, classes=3).eval()
    assert model.encoder.out_channels == OUT_CHANNELS[arch]
    with torch.no_grad():
        y = model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 3, 64, 64) and torch.isfinite(y).all()


def test_deeplab_dilates_the_encoder_and_reports_it():
    model = smp.DeepLabV3Plus("rt-resnet18", encoder_weights=None, classes=2).eval()
    enc = model.encoder
    assert enc.output_stride == 16
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4, 4]   # layer4 dilated, not strided
    assert [f.stride for f in enc.feature_info] == [2, 4, 8, 16, 16]


def test_shallower_encoder_depth():
    """depth 4 builds no layer4; DeepLabV3Plus still asks to dilate it."""
    model = smp.DeepLabV3Plus("rt-resnet18", encoder_weights=None, encoder_depth=4, classes=2).eval()
    assert not hasattr(model.encoder.backbone, "layer4")
    assert model.encoder.out_channels == [3, 64, 64, 128, 256]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_other_input_channels_and_loading_rgb_weights(in_channels, tmp_path):
    torch.manual_seed(0)
    rgb = torchvision.models.resnet18().state_dict()
    path = tmp_path / "r18.pth"
    torch.save(rgb, path)
    model = smp.Unet("rt-resnet18", encoder_weights=None, in_channels=in_channels, classes=2).eval()
    assert model.encoder.backbone.conv1.in_channels == in_channels
    model.encoder.load_weights(str(path))  # the file's conv1 is RGB: adapted as smp does
    w, w3 = model.encoder.backbone.conv1.weight, rgb["conv1.weight"]
    if in_channels == 1:
        assert torch.equal(w, w3.sum(1, keepdim=True))
    else:  # RGB repeated, scaled by 3/4
        assert torch.equal(w, torch.cat([w3, w3[:, :1]], 1) * 0.75)
    assert torch.equal(model.encoder.backbone.layer1[0].conv1.weight, rgb["layer1.0.conv1.weight"])
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, 64, 64)).shape == (2, 2, 64, 64)


def test_load_weights_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    model = smp.Unet("rt-resnet18", encoder_weights=None, classes=2)
    assert model.encoder.load_weights(str(path)) is model.encoder
    assert model.encoder.preprocessing.source == str(path)
    for k, v in model.encoder.backbone.state_dict().items():
        assert torch.equal(v, tv.state_dict()[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        c5 = model.encoder.eval()(x)[-1]
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
    assert torch.equal(c5, ref)

    other = smp.FPN("rt-resnet50", encoder_weights=None, classes=2)
    with pytest.raises(WeightsError, match="looks like resnet18"):
        other.encoder.load_weights(str(path))


def test_freeze_via_encoder_survives_training():
    torch.manual_seed(0)
    model = smp.Unet("rt-resnet18", encoder_weights=None, classes=2)
    model.encoder.freeze(3)
    model.train()
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
    for name, m in model.encoder.backbone.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training == (not (name + ".").startswith(frozen)), name
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(2):
        opt.zero_grad()
        logits = model(torch.randn(2, 3, 64, 64))
        nn.functional.cross_entropy(logits, torch.randint(0, 2, (2, 64, 64))).backward()
        opt.step()
    after = model.state_dict()
    for k, v in before.items():
        if k.endswith("num_batches_tracked"):
            continue
        local = k.removeprefix("encoder.backbone.")
        if k.startswith("encoder.") and local.startswith(frozen):
            assert torch.equal(after[k], v), k
        else:
            assert not torch.equal(after[k], v), k


def test_encoder_weights_imagenet_through_smps_own_mechanism(tmp_path, monkeypatch):
    """smp downloads smp-hub's torchvision-layout weights; here its download returns a local file."""
    import json

    import segmentation_models_pytorch.encoders as smp_encoders
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tv = torchvision.models.resnet18().state_dict()
    trunk = {k: v for k, v in tv.items() if not k.startswith("fc.")}
    save_file(trunk, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    asked = []

    def fake_download(repo_id, filename, revision=None):
        asked.append(repo_id)
        return str(tmp_path / filename)

    monkeypatch.setattr(smp_encoders, "hf_hub_download", fake_download)
    model = smp.Unet("rt-resnet18", encoder_weights="imagenet", classes=2)
    assert asked[-1] == "smp-hub/resnet18.imagenet"  # the weights smp has for its own resnet18
    for k, v in model.encoder.backbone.state_dict().items():
        assert torch.equal(v, tv[k]), k
    gray = smp.Unet("rt-resnet18", encoder_weights="imagenet", in_channels=1, classes=2)
    assert torch.equal(gray.encoder.backbone.conv1.weight, tv["conv1.weight"].sum(1, keepdim=True))
    assert "imagenet" not in smp_encoders.encoders["rt-wide_resnet50_2"]["pretrained_settings"]
