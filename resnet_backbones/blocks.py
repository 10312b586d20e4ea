"""torchvision's residual blocks with stochastic depth, the CIFAR stem, and dilation of whole stages.

The blocks subclass torchvision's, so parameter names, initialisation and numerics stay
torchvision's (checkpoints load unchanged); only ``forward`` gains the drop-path step that timm's
ResNet has. Dilation follows torchvision/timm exactly (DeepLab's rule): in a dilated stage the
first block's 3×3 convolution keeps the previous dilation, the other blocks use the new one.
"""
from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn
from torchvision.models import resnet as tv

STEMS = ("imagenet", "cifar")


class BasicBlock(tv.BasicBlock):
    """torchvision ``BasicBlock`` + ``drop_path`` on the residual branch (identity by default)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.drop_path(self.bn2(self.conv2(out)))
        out += identity  # in place, as torchvision and timm do: no new tensor per block
        return self.relu(out)


class Bottleneck(tv.Bottleneck):
    """torchvision ``Bottleneck`` + ``drop_path`` on the residual branch (identity by default)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.drop_path(self.bn3(self.conv3(out)))
        out += identity
        return self.relu(out)


DROP_PATH_BLOCKS = {tv.BasicBlock: BasicBlock, tv.Bottleneck: Bottleneck}


def set_drop_path(stages: list[nn.Sequential], rate: float, total_blocks: int) -> None:
    """timm's linear rule: block ``i`` of the ``total_blocks`` drops its branch with ``rate · i / (total − 1)``.

    ``total_blocks`` counts the whole architecture's blocks, so a backbone that builds fewer stages
    keeps the rates the full network has.
    """
    i = 0
    for stage in stages:
        for block in stage:
            p = rate * i / max(1, total_blocks - 1)
            block.drop_path = DropPath(p) if p > 0 else nn.Identity()
            i += 1


def cifar_stem(conv1: nn.Conv2d) -> nn.Conv2d:
    """The small-image stem's 3×3 stride-1 convolution (He et al. 2016, §4.2), replacing a 7×7/2 one
    (the max-pool goes too, see :class:`resnet_backbones.backbone.ResNetBackbone`)."""
    conv = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
    return conv


def dilate_stage(stage: nn.Sequential, dilation: int, previous: int) -> None:
    """Turn a stride-2 stage into a stride-1 stage with ``dilation`` (torchvision's/timm's layout)."""
    for i, block in enumerate(stage):
        d = previous if i == 0 else dilation
        convs = [block.conv1, block.conv2] if isinstance(block, tv.BasicBlock) else [block.conv2]
        for j, conv in enumerate(convs):
            # BasicBlock: the second 3×3 of the first block already sees the new dilation.
            dj = dilation if (isinstance(block, tv.BasicBlock) and j == 1) else d
            conv.stride, conv.dilation, conv.padding = (1, 1), (dj, dj), (dj, dj)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
