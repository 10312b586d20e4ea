"""The feature extractor alone: ``create_backbone`` vs torchvision's ResNet run conv1…layer4."""
from __future__ import annotations

import torch

from resnet_backbones import create_backbone

from .sides import Settings
from .timing import Ratio


def run(s: Settings, extra: dict) -> list[Ratio]:
    import torchvision

    out = []
    size, batch = (128, 8) if s.quick else (224, 16)
    for arch in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        tv = torchvision.models.get_model(arch, weights=None).to(s.device).eval()
        ours = create_backbone(arch, weights=None).to(s.device).eval()
        ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
        if s.channels_last:
            tv.to(memory_format=torch.channels_last), ours.to(memory_format=torch.channels_last)

        def bare(x, tv=tv):  # torchvision's modules in ResNet._forward_impl's order, stopping at layer4
            x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
            return tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))

        run_ours, run_tv = (torch.compile(ours), torch.compile(bare)) if s.compile else (ours, bare)

        x = torch.randn(batch, 3, size, size, device=s.device)
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def call(fn):
            def f():
                with torch.no_grad(), s.autocast():
                    return fn(x)
            return f

        out.append(s.ratio(f"backbone/forward/{arch}", call(run_ours), call(run_tv),
                           note=f"c2…c5 dict vs conv1…layer4, {size}px b{batch}"))
    # The same call on both sides: how far from 1.000 this machine's noise alone moves a ratio today.
    out.append(s.ratio("control/same_call", call(run_tv), call(run_tv),
                       note=f"torchvision resnet50 vs itself (noise floor), {size}px b{batch}"))
    return out
