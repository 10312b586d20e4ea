"""Weights: local files in torchvision/timm layout (.pth, .safetensors, wrapped), named releases
(torchvision/timm, downloads mocked), preprocessing, and every error a user can meet offline."""
from __future__ import annotations

import shutil
import tempfile
import urllib.error
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.feature_extraction import create_feature_extractor

from resnet_backbones import UserError, WeightsError, create_backbone, read_state_dict
from resnet_backbones.weights import guess_architecture


def random_torchvision(arch: str, seed: int = 0) -> torch.nn.Module:
    """A torchvision model with non-default BN statistics (so a stats-less load would show)."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def tv18():
    """(model, state dict, .pth path) of one random resnet18, shared: building is the slow part."""
    model = random_torchvision("resnet18")
    folder = Path(tempfile.mkdtemp(prefix="tv18-"))
    torch.save(model.state_dict(), folder / "resnet18.pth")
    yield model, model.state_dict(), folder / "resnet18.pth"
    shutil.rmtree(folder, ignore_errors=True)


def assert_trunk_equal(bb: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = bb.state_dict()
    assert own, "empty backbone"
    for k, v in own.items():
        assert torch.equal(v, sd[k]), k


def layer4_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return create_feature_extractor(model, {"layer4": "c5"})(x)["c5"]


# ---- local files ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_pth_round_trip_gives_torchvision_output(arch, tmp_path, tv18):
    if arch == "resnet18":
        tv, _, path = tv18
    else:
        tv = random_torchvision(arch)
        path = tmp_path / f"{arch}.pth"
        torch.save(tv.state_dict(), path)  # classifier included: it must be ignored
    bb = create_backbone(arch, weights=str(path)).eval()
    assert_trunk_equal(bb, tv.state_dict())
    assert bb.preprocessing.source == str(path)
    assert bb.preprocessing.mean == (0.485, 0.456, 0.406) and bb.preprocessing.input_size == 224
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(bb(x)["c5"], layer4_of(tv, x))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_timm_layout_file(arch, tmp_path):
    torch.manual_seed(1)
    model = timm.create_model(arch, pretrained=False).eval()
    path = tmp_path / "timm.pth"
    torch.save(model.state_dict(), path)
    bb = create_backbone(arch, weights=path).eval()  # a Path works as well as a str
    assert_trunk_equal(bb, model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bb(x)["c5"], model.forward_features(x), rtol=1e-5, atol=1e-5)


def test_safetensors_file(tmp_path, tv18):
    _, sd, _ = tv18
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    assert_trunk_equal(create_backbone("resnet18", weights=str(path)), sd)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 7},   # DDP + Lightning-like
    lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": []}},           # training checkpoint
    lambda sd: {"model_state_dict": {"backbone.body." + k: v for k, v in sd.items()}    # detection model
                                    | {"rpn.head.conv.0.0.weight": torch.zeros(256, 256, 3, 3)}},
], ids=["state_dict+module.", "model", "backbone.body."])
def test_wrapped_checkpoints(wrap, tmp_path, tv18):
    _, sd, _ = tv18
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(sd), path)
    assert_trunk_equal(create_backbone("resnet18", weights=str(path)), sd)


def test_full_file_into_truncated_backbone_and_frozen_bn(tv18):
    _, sd, path = tv18
    bb = create_backbone("resnet18", weights=str(path), out_features=("c3",), norm="frozen_bn", freeze_stages=2)
    assert not hasattr(bb, "layer3")  # layer3/layer4 keys in the file are ignored, not an error
    assert_trunk_equal(bb, sd)


def test_weights_none_means_random_init():
    for w in (None, "none", "None"):
        assert create_backbone("resnet18", weights=w).preprocessing.source == "none"


# ---- files that do not fit ------------------------------------------------------------------

def test_resnet18_file_into_resnet50_is_one_clear_error(tv18):
    path = tv18[2]
    with pytest.raises(WeightsError) as e:
        create_backbone("resnet50", weights=str(path))
    msg = str(e.value)
    assert "do not fit resnet50" in msg
    assert "missing" in msg and "layer1.0.conv3.weight" in msg            # what the file lacks
    assert "other shape" in msg and "layer1.0.conv1.weight file (64, 64, 3, 3) vs model (64, 64, 1, 1)" in msg
    assert "looks like resnet18" in msg                                     # and what it is


def test_resnet50_file_into_resnet18_lists_unexpected_keys(tmp_path):
    with torch.device("meta"):  # only the shapes matter here: skip random init
        r50 = torchvision.models.resnet50()
    path = tmp_path / "r50.pth"
    torch.save(r50.to_empty(device="cpu").state_dict(), path)
    with pytest.raises(WeightsError, match=r"unexpected.*conv3.*looks like resnet50"):
        create_backbone("resnet18", weights=str(path))


def test_unrelated_state_dict_has_no_guess(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.0.weight": torch.zeros(16, 3, 3, 3), "classifier.weight": torch.zeros(10, 16)}, path)
    with pytest.raises(WeightsError) as e:
        create_backbone("resnet18", weights=str(path))
    assert "do not fit resnet18" in str(e.value) and "looks like" not in str(e.value)
    with torch.device("meta"):  # the guess compares keys and shapes only
        assert guess_architecture(torchvision.models.resnet34().state_dict()) == "resnet34"


@pytest.mark.parametrize("name, content", [("bad.pth", b"not a checkpoint"),
                                           ("bad.pt", b"PK\x03\x04" + b"\x00" * 64),
                                           ("bad.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}")])
def test_corrupt_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="cannot read weights file") as e:
        create_backbone("resnet18", weights=str(path))
    assert str(path) in str(e.value)
    # torch's own text advises weights_only=False (arbitrary code execution): not passed on
    assert "weights_only` set to `False" not in str(e.value)


def test_pickled_code_is_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Evil()}, path)
    with pytest.raises(WeightsError, match="pickles Python objects"):
        read_state_dict(path)
    assert not marker.exists()


def test_whole_model_pickle_says_what_to_save(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(torchvision.models.resnet18(), path)
    with pytest.raises(WeightsError, match=r"whole model.*state_dict\(\)"):
        create_backbone("resnet18", weights=str(path))


def test_file_without_tensors(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(WeightsError, match="no state dict of tensors"):
        create_backbone("resnet18", weights=str(path))


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(WeightsError, match="not found") as e:
        create_backbone("resnet18", weights=str(path))
    assert str(path) in str(e.value)


def test_unknown_weights_name():
    with pytest.raises(WeightsError, match="not understood.*'imagenet', 'torchvision:TAG'"):
        create_backbone("resnet18", weights="imagenet22k")


# ---- named releases (downloads mocked: this machine is offline) -----------------------------

def test_offline_torchvision_error_names_cache_and_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    for weights in ("imagenet", "torchvision:IMAGENET1K_V1"):
        with pytest.raises(WeightsError) as e:
            create_backbone("resnet18", weights=weights)
        msg = str(e.value)
        filename = Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
        assert str(Path(torch.hub.get_dir()) / "checkpoints" / filename) in msg
        assert "URLError" in msg and "local file" in msg and "weights='PATH'" in msg


def test_imagenet_resolves_to_torchvision_v2_with_its_preprocessing(monkeypatch, tmp_path):
    tv = random_torchvision("resnet50")
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return tv.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    bb = create_backbone("resnet50", weights="imagenet")
    (url, kwargs), = calls
    assert url == torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    assert kwargs["weights_only"] is True and kwargs["check_hash"] is True
    assert_trunk_equal(bb, tv.state_dict())
    pre = bb.preprocessing
    # V2 weights are evaluated at resize 232 / crop 224 (V1: 256 / 224)
    assert (pre.input_size, pre.resize_size, pre.source) == (224, 232, "torchvision:IMAGENET1K_V2")
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)


def test_unknown_torchvision_tag_lists_known():
    with pytest.raises(WeightsError, match="no weights 'IMAGENET1K_V2' for resnet18; known: IMAGENET1K_V1"):
        create_backbone("resnet18", weights="torchvision:IMAGENET1K_V2")


def test_offline_timm_error_names_cache_and_local_file(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: set the parsed value too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError) as e:
        create_backbone("resnet18", weights="timm:resnet18.a1_in1k")
    msg = str(e.value)
    assert "timm:resnet18.a1_in1k" in msg and huggingface_hub.constants.HF_HUB_CACHE in msg
    assert "weights='PATH'" in msg


def test_timm_tag_loads_through_timm_with_its_preprocessing(monkeypatch):
    torch.manual_seed(2)
    model = timm.create_model("resnet50", pretrained=False)
    calls = []

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        return model

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    bb = create_backbone("resnet50", weights="timm:resnet50.a1_in1k")
    assert calls == [("resnet50.a1_in1k", True)]
    assert_trunk_equal(bb, model.state_dict())
    cfg = timm.models.get_pretrained_cfg("resnet50.a1_in1k")
    pre = bb.preprocessing
    assert (pre.mean, pre.std, pre.source) == (tuple(cfg.mean), tuple(cfg.std), "timm:resnet50.a1_in1k")
    assert pre.input_size == cfg.input_size[-1] and pre.resize_size == round(cfg.input_size[-1] / cfg.crop_pct)


@pytest.mark.parametrize("weights, match", [("timm:resnet50.a1_in1k", "are for resnet50, not resnet18"),
                                            ("timm:resnet18.no_such_tag", "knows no weights")])
def test_timm_name_errors(weights, match):
    with pytest.raises(WeightsError, match=match) as e:
        create_backbone("resnet18", weights=weights)
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
