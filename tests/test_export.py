"""torch.jit.script, torch.jit.trace(strict=True) and torch.export.export (dynamic batch and spatial
size) on the backbone, the backbone + FPN, and the classification and segmentation models; every
compiled module is run on a second input shape and must equal the eager module."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.export import Dim

from resnet_backbones import create_backbone
from tasks.classification.model import ImageClassifier
from tasks.segmentation.model import build_segmentation_model

BACKBONES = {
    "dict": {},
    "list": {"out_format": "list"},
    "os8_droppath": {"output_stride": 8, "drop_path_rate": 0.1},
    "cifar_gray": {"stem": "cifar", "in_chans": 1, "out_indices": (0, 1, 2, 3, 4)},
    "fpn_maxpool": {"fpn": True, "fpn_channels": 32, "fpn_extra": "maxpool"},
    "fpn_p6p7": {"fpn": True, "fpn_channels": 32, "out_features": ("c3", "c4", "c5"), "fpn_extra": "p6p7"},
}


def as_list(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return list(out.values()) if isinstance(out, dict) else list(out)


def check_all_three(model: nn.Module, x: torch.Tensor, other: torch.Tensor, spatial) -> None:
    """``spatial``: the export Dim of height and width (any size, or multiples of 32)."""
    model.eval()
    with torch.no_grad():
        want, want_other = as_list(model(x)), as_list(model(other))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of export
        scripted = torch.jit.script(model)
        traced = torch.jit.trace(model, x, strict=True)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=32), 2: spatial[0],
                                                                  3: spatial[1]},)).module()
    with torch.no_grad():
        torch.testing.assert_close(as_list(scripted(other)), want_other)
        assert isinstance(scripted(x), dict) == isinstance(model(x), dict)  # script keeps the dict
        # traced: the same tensors, a dict coming back as a tuple in feature_info order
        torch.testing.assert_close(as_list(traced(x)), want)
        torch.testing.assert_close(as_list(exported(other)), want_other)


@pytest.mark.parametrize("variant", list(BACKBONES))
def test_backbone_script_trace_export(variant):
    kwargs = BACKBONES[variant]
    torch.manual_seed(0)
    model = create_backbone("resnet18", weights=None, **kwargs)
    c = kwargs.get("in_chans", 3)
    smallest = max(model.feature_info.reduction()) + 1  # every level ≥ 2 px (1 px sizes get specialised)
    x, other = torch.randn(2, c, smallest + 31, smallest + 31), torch.randn(3, c, smallest + 20, smallest + 50)
    check_all_three(model, x, other, (Dim("h", min=smallest, max=1024), Dim("w", min=smallest, max=1024)))


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_classifier_script_trace_export(head):
    torch.manual_seed(0)
    model = ImageClassifier(create_backbone("resnet18", weights=None, out_features=("c4", "c5")), 5, head)
    check_all_three(model, torch.randn(2, 3, 64, 64), torch.randn(3, 3, 80, 48),
                    (Dim("h", min=33, max=1024), Dim("w", min=33, max=1024)))


@pytest.mark.parametrize("head", ["unet", "fpn", "deeplabv3plus"])
def test_segmentation_script_trace_export(head):
    torch.manual_seed(0)
    model = build_segmentation_model("resnet18", 3, head, decoder_channels=[64, 32, 16, 16, 8])
    check_all_three(model, torch.randn(2, 3, 64, 64), torch.randn(3, 3, 96, 128),
                    (32 * Dim("h", min=2, max=32), 32 * Dim("w", min=2, max=32)))


def test_a_traced_parent_still_gets_the_dict():
    """Only the module being traced returns a list; submodules keep the dict their parent indexes."""
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = create_backbone("resnet18", weights=None, fpn=True, fpn_channels=16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone(x)["p3"].mean((2, 3))

    model = Head().eval()
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, x, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))
