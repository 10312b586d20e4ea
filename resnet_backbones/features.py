"""Feature metadata published by backbones and necks (read by FPNs and heads), in two dialects.

Our code reads ``f.name`` / ``f.channels`` / ``f.stride`` of each output; code written for timm's
``features_only`` models reads ``feature_info.channels()``, ``.reduction()``, ``.module_name()``,
``.get_dicts()`` and ``feature_info[i]["num_chs"]``. :class:`FeatureInfoList` answers both.
"""
# No ``from __future__ import annotations``: TorchScript reads _as_list_at_top's annotations as objects.
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, Sequence

import torch
from torch import nn

# timm's per-feature dict keys → our attribute names
_TIMM_KEYS = {"num_chs": "channels", "reduction": "stride", "module": "module", "index": "index"}


@dataclass(frozen=True)
class FeatureInfo:
    """One output feature map: its dict key, channel count and stride w.r.t. the input.

    ``module`` is the submodule whose output it is and ``index`` its position among all the
    levels the architecture has (timm's ``module`` and ``index``). Also readable as timm's
    per-feature dict: ``f["num_chs"]``, ``f["reduction"]``, ``f["module"]``, ``f["index"]``.
    """

    name: str
    channels: int
    stride: int
    module: str = ""
    index: int = -1

    def __getitem__(self, key: str) -> Any:
        if key not in _TIMM_KEYS:
            raise KeyError(key)
        return getattr(self, _TIMM_KEYS[key])

    def keys(self) -> tuple[str, ...]:
        return tuple(_TIMM_KEYS)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in _TIMM_KEYS else default

    def as_dict(self) -> dict[str, Any]:
        """timm's dict for this feature: ``{"num_chs", "reduction", "module", "index"}``."""
        return {k: self[k] for k in _TIMM_KEYS}


class FeatureInfoList(tuple):
    """The outputs' :class:`FeatureInfo`, highest resolution first, with timm's ``FeatureInfo`` accessors.

    Indices (``idx`` below and ``[i]``) count the returned features; ``idx=None`` means all of them
    (timm's ``out_indices``, which :attr:`out_indices` also holds).

    Example:
        >>> fi = FeatureInfoList([FeatureInfo("c4", 256, 16, "layer3", 3), FeatureInfo("c5", 512, 32, "layer4", 4)])
        >>> fi.channels(), fi.reduction(), fi.module_name(), fi.out_indices
        ([256, 512], [16, 32], ['layer3', 'layer4'], (3, 4))
        >>> fi[-1]["num_chs"], fi[-1].channels
        (512, 512)
    """

    def __new__(cls, infos: Iterable[FeatureInfo]) -> "FeatureInfoList":
        return super().__new__(cls, tuple(infos))

    @property
    def out_indices(self) -> tuple[int, ...]:
        return tuple(f.index for f in self)

    def get(self, key: str, idx: int | Sequence[int] | None = None):
        if idx is None:
            return [f[key] for f in self]
        if isinstance(idx, (list, tuple)):
            return [self[i][key] for i in idx]
        return self[idx][key]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None):
        def one(f: FeatureInfo) -> dict[str, Any]:
            return f.as_dict() if keys is None else {k: f[k] for k in keys}

        if idx is None:
            return [one(f) for f in self]
        if isinstance(idx, (list, tuple)):
            return [one(self[i]) for i in idx]
        return one(self[idx])

    def channels(self, idx: int | Sequence[int] | None = None):
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None):
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None):
        return self.get("module", idx)

    def by_name(self) -> dict[str, FeatureInfo]:
        return {f.name: f for f in self}

    def with_prefix(self, prefix: str) -> "FeatureInfoList":
        """The same features with module names as seen from a parent module (``prefix`` = child name)."""
        return FeatureInfoList(replace(f, module=f"{prefix}.{f.module}") for f in self)


def by_name(infos: Sequence[FeatureInfo]) -> dict[str, FeatureInfo]:
    return {f.name: f for f in infos}


class FeatureListNet(nn.Module):
    """A dict-output backbone (or backbone + FPN) returning a list instead, as timm's
    ``features_only`` models do; ``feature_info`` is passed through.

    Example:
        >>> from resnet_backbones import create_backbone
        >>> m = create_backbone("resnet18", weights=None, out_indices=(2, 4), out_format="list")
        >>> [tuple(t.shape) for t in m(torch.zeros(1, 3, 64, 64))], m.feature_info.channels()
        ([(1, 128, 8, 8), (1, 512, 2, 2)], [128, 512])
    """

    __jit_unused_properties__ = ["feature_info", "preprocessing"]

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def feature_info(self) -> FeatureInfoList:
        return self.model.feature_info.with_prefix("model")

    @property
    def preprocessing(self):
        return self.model.preprocessing

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x).values())


@torch.jit.unused
def _as_list_at_top(feats: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:  # typing.Dict: TorchScript
    # Annotated as a dict for the TorchScript compiler, which never calls it (see traceable()).
    # The tracer records the module being traced in scope "" and submodules in "__module.NAME"
    # (torch's private tracing state, hence the fallback): only the traced module itself returns a
    # list, so that a parent module being traced still gets its dict.
    state = torch._C._get_tracing_state()
    scope = getattr(state, "current_scope", lambda: "")()
    return tuple(feats.values()) if scope == "" else feats  # type: ignore[return-value]


def traceable(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``feats`` as is, or as a tuple in the same order when this module is the one ``torch.jit.trace``
    records: the tracer's strict mode refuses dict outputs (their keys could depend on the input)."""
    if torch.jit.is_tracing():
        return _as_list_at_top(feats)
    return feats
