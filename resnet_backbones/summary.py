"""Human-readable freezing summary and the equivalent settings in other frameworks."""
from __future__ import annotations

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from .backbone import ResNetBackbone, validate_freeze_stages
from .fpn import BackboneWithFPN


def framework_equivalents(freeze_stages: int) -> dict[str, int]:
    """The same freezing in detectron2, mmdet and torchvision (each counts differently)."""
    n = validate_freeze_stages(freeze_stages)
    return {
        "detectron2 MODEL.BACKBONE.FREEZE_AT": 0 if n == 0 else n + 1,  # 1 = stem, 2 = stem + res2
        "mmdet backbone.frozen_stages": -1 if n == 0 else n,            # 0 = stem only
        "torchvision trainable_layers": 5 if n == 0 else 4 - n,          # counts trainable, from layer4 down
    }


def _bn_mode(mods: list[nn.Module]) -> str:
    bns = [m for mod in mods for m in mod.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    if not bns:
        return "-"
    if all(isinstance(m, FrozenBatchNorm2d) for m in bns):
        return "frozen (FrozenBatchNorm2d)"
    return "train (batch stats)" if all(m.training for m in bns) else "eval (running stats)"


def freeze_table(backbone: ResNetBackbone) -> list[dict]:
    """Per stage: trainable/frozen parameter counts and BatchNorm mode (in the current train/eval state)."""
    rows = []
    for stage, mods in backbone.stage_modules():
        params = [p for m in mods for p in m.parameters()]
        rows.append({"stage": stage,
                     "trainable": sum(p.numel() for p in params if p.requires_grad),
                     "frozen": sum(p.numel() for p in params if not p.requires_grad),
                     "bn": _bn_mode(mods)})
    return rows


def describe(backbone: ResNetBackbone | BackboneWithFPN) -> str:
    """Printable summary: features, per-stage freezing and the other frameworks' equivalent setting.

    Takes what :func:`create_backbone` returns, with or without ``fpn=True`` (the FPN gets a row).
    """
    # create_backbone(fpn=True) returns a BackboneWithFPN; describing it used to fail on `.spec`.
    body = backbone.body if isinstance(backbone, BackboneWithFPN) else backbone
    was_training = body.training
    body.train()  # report BN modes as they are during training
    rows = freeze_table(body)
    body.train(was_training)
    if isinstance(backbone, BackboneWithFPN):
        params = list(backbone.fpn.parameters())
        rows.append({"stage": "fpn", "trainable": sum(p.numel() for p in params if p.requires_grad),
                     "frozen": sum(p.numel() for p in params if not p.requires_grad), "bn": "-"})
    lines = [f"{body.spec.name}  norm={body.norm}  freeze_stages={body.freeze_stages}  "
             f"weights={body.preprocessing.source}",
             "features: " + ", ".join(f"{f.name} ({f.channels} ch, stride {f.stride})" for f in backbone.feature_info),
             f"{'stage':8} {'trainable':>11} {'frozen':>11}  BatchNorm in train()"]
    for r in rows:
        lines.append(f"{r['stage']:8} {r['trainable']:>11,} {r['frozen']:>11,}  {r['bn']}")
    lines.append(f"{'total':8} {sum(r['trainable'] for r in rows):>11,} {sum(r['frozen'] for r in rows):>11,}")
    lines.append("same freezing elsewhere: " + "; ".join(
        f"{k} = {v}" for k, v in framework_equivalents(body.freeze_stages).items()))
    return "\n".join(lines)
