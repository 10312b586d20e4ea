"""The feature extractor alone: ``create_backbone`` vs torchvision's ResNet run conv1…layer4."""
from __future__ import annotations

import torch

from resnet_backbones import create_backbone

from .sides import Settings, size_batch
from .timing import Ratio


def run(s: Settings, extra: dict) -> list[Ratio]:
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    out = []
    size, batch = size_batch("backbone", s)
    for arch in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        tv = torchvision.models.get_model(arch, weights=None).to(s.device).eval()
        trunk = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
        ours = create_backbone(arch, weights=None).to(s.device).eval()
        ours_c5 = create_backbone(arch, weights=None, out_features=("c5",)).to(s.device).eval()
        ours.load_state_dict(trunk), ours_c5.load_state_dict(trunk)
        # torchvision's own multi-scale extractor (what its detection backbones use): the same four maps.
        # Keeping them alive until the end costs ~3 % against a forward that drops each after use.
        tv_features = IntermediateLayerGetter(tv, {f"layer{i}": f"c{i + 1}" for i in range(1, 5)})
        if s.channels_last:
            for m in (tv, ours, ours_c5):
                m.to(memory_format=torch.channels_last)

        def bare(x, tv=tv):  # torchvision's modules in ResNet._forward_impl's order, stopping at layer4
            x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
            return tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))

        fns = [ours, tv_features, ours_c5, bare]
        if s.compile:
            fns = [torch.compile(f) for f in fns]
        x = torch.randn(batch, 3, size, size, device=s.device)
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def call(fn):
            def f():
                with torch.no_grad(), s.autocast():
                    return fn(x)
            return f

        out.append(s.ratio(f"backbone/forward/{arch}", call(fns[0]), call(fns[1]),
                           note=f"c2…c5 vs torchvision IntermediateLayerGetter, {size}px b{batch}"))
        out.append(s.ratio(f"backbone/forward_c5/{arch}", call(fns[2]), call(fns[3]),
                           note=f"c5 only vs conv1…layer4, {size}px b{batch}"))
    # The same call on both sides: how far from 1.000 this machine's noise alone moves a ratio today.
    out.append(s.ratio("control/same_call", call(fns[3]), call(fns[3]),
                       note=f"torchvision resnet50 vs itself (noise floor), {size}px b{batch}"))
    return out
