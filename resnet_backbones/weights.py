"""Resolve a ``weights=`` argument to a state dict plus the preprocessing it was trained with.

Accepted forms: ``"imagenet"``, ``"torchvision:IMAGENET1K_V2"``, ``"timm:resnet50.a1_in1k"``,
a local ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file, or ``None`` / ``"none"``.
Every file is read with ``torch.load(weights_only=True)`` or safetensors: no pickled code runs.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .errors import WeightsError
from .registry import BackboneSpec, get_spec, list_backbones

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
# Where a checkpoint may nest the backbone's weights (torchvision detection, smp, Lightning, DDP…).
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for these weights (travels with the backbone)."""

    mean: tuple[float, ...] = IMAGENET_MEAN  # one value per input channel
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 224
    resize_size: int = 256
    source: str = "none"

    def for_channels(self, channels: int) -> "Preprocessing":
        """The same for ``channels`` input channels: 1 takes the average (a gray value meets RGB filters
        summed into one, see :func:`fit_stem`); more repeat the values in turn (timm's filter repeat).

        >>> Preprocessing().for_channels(1).mean
        (0.449,)
        """
        if channels == len(self.mean):
            return self
        if channels == 1:
            return replace(self, mean=(round(sum(self.mean) / len(self.mean), 4),),
                           std=(round(sum(self.std) / len(self.std), 4),))
        return replace(self, mean=tuple(self.mean[i % len(self.mean)] for i in range(channels)),
                       std=tuple(self.std[i % len(self.std)] for i in range(channels)))

    def as_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "input_size": self.input_size,
                "resize_size": self.resize_size, "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Preprocessing":
        return cls(mean=tuple(d["mean"]), std=tuple(d["std"]), input_size=int(d["input_size"]),
                   resize_size=int(d["resize_size"]), source=str(d["source"]))


def _usage() -> str:
    return ("pass weights='imagenet', 'torchvision:TAG', 'timm:NAME.TAG', a local .pth/.pt/.safetensors "
            "file, or 'none' for random init")


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike | None
                    ) -> tuple[dict[str, torch.Tensor] | None, Preprocessing]:
    """Return ``(state_dict or None, preprocessing)`` for ``weights`` on architecture ``spec``."""
    if weights is None or str(weights).lower() in ("none", "random", ""):
        return None, Preprocessing(source="none")
    w = str(weights)
    if w == "imagenet":
        w = spec.imagenet
    if w.startswith("torchvision:"):
        return _torchvision_weights(spec, w.split(":", 1)[1])
    if w.startswith("timm:"):
        return _timm_weights(spec, w.split(":", 1)[1])
    path = Path(w).expanduser()
    if path.suffix.lower() in WEIGHT_SUFFIXES or path.exists() or os.sep in w:
        return read_state_dict(path), Preprocessing(source=str(path))
    raise WeightsError(f"weights {w!r} not understood for {spec.name}; {_usage()}")


def preprocessing_for(spec: BackboneSpec, weights: str | None) -> Preprocessing:
    """The preprocessing of ``weights`` without downloading anything."""
    w = spec.imagenet if weights == "imagenet" else (weights or "none")
    if w.startswith("torchvision:"):
        tf = _torchvision_enum(spec, w.split(":", 1)[1]).transforms()
        return Preprocessing(tuple(tf.mean), tuple(tf.std), tf.crop_size[0], tf.resize_size[0], w)
    if w.startswith("timm:"):
        return _timm_preprocessing(spec, w.split(":", 1)[1])
    return Preprocessing(source=w)


def _torchvision_enum(spec: BackboneSpec, tag: str):
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(spec.name)
    except ValueError:
        raise WeightsError(f"torchvision has no weights for {spec.name}; {_usage()}") from None
    try:
        return enum[tag]
    except KeyError:
        raise WeightsError(f"torchvision has no weights {tag!r} for {spec.name}; "
                           f"known: {', '.join(e.name for e in enum)}") from None


def _detector_enum(tag: str):
    """torchvision's weights of detection model ``tag`` (e.g. ``fasterrcnn_resnet50_fpn``), or None."""
    from torchvision.models import detection, get_model_weights, list_models

    return get_model_weights(tag).DEFAULT if tag in list_models(module=detection) else None


def download_torchvision(entry, label: str) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision ``Weights`` entry (hash-checked, cached by torch.hub)."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
    try:
        return torch.hub.load_state_dict_from_url(entry.url, map_location="cpu", progress=True,
                                                  check_hash=True, weights_only=True)
    except Exception as e:  # URLError, socket errors, hash mismatch: all mean "not usable here"
        raise WeightsError(
            f"cannot download {label} ({type(e).__name__}: {e}); it is cached at {cache} once downloaded. "
            f"Offline, copy {Path(entry.url).name} there or pass a local file with --weights PATH "
            "(or weights='PATH')") from None


def _torchvision_weights(spec: BackboneSpec, tag: str):
    detector = _detector_enum(tag)
    sd = download_torchvision(detector or _torchvision_enum(spec, tag), f"torchvision:{tag} for {spec.name}")
    if detector is not None:  # a detector's trunk as the backbone
        return strip_prefix(sd), Preprocessing(source=f"torchvision:{tag}")
    return sd, preprocessing_for(spec, f"torchvision:{tag}")


def _timm_preprocessing(spec: BackboneSpec, name: str) -> Preprocessing:
    import timm

    arch = name.split(".", 1)[0]
    if arch != spec.name:
        raise WeightsError(f"timm weights {name!r} are for {arch}, not {spec.name}")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        cfg = None
    if cfg is None:
        raise WeightsError(f"timm knows no weights {name!r}; see timm.list_pretrained('{spec.name}.*')")
    size = cfg.input_size[-1]
    return Preprocessing(tuple(cfg.mean), tuple(cfg.std), size, int(round(size / cfg.crop_pct)), f"timm:{name}")


def _timm_weights(spec: BackboneSpec, name: str):
    import timm

    pre = _timm_preprocessing(spec, name)
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as e:  # huggingface_hub raises several offline error types
        from huggingface_hub import constants

        raise WeightsError(
            f"cannot download timm:{name} ({type(e).__name__}); the Hugging Face cache is {constants.HF_HUB_CACHE}. "
            f"Offline, save the weights to a file and pass --weights PATH (or weights='PATH')") from None
    return model.state_dict(), pre


def read_state_dict(path: str | os.PathLike, strip: bool = True) -> dict[str, torch.Tensor]:
    """Read a weights file safely and unwrap ``state_dict``/``model``/``module.`` nesting; ``strip``
    keeps the ResNet trunk's keys only (see :func:`strip_prefix`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; {_usage()}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"cannot read weights file {path} ({_load_failure(e)}); expected a torch state dict "
                           "(.pth/.pt, saved with torch.save(model.state_dict(), path)) or a .safetensors file"
                           ) from None
    while isinstance(obj, Mapping):
        nested = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} holds no state dict of tensors")
    return strip_prefix(dict(obj)) if strip else dict(obj)


def _load_failure(e: Exception) -> str:
    """One line on why a file did not load.

    torch's weights_only message opens with advice to retry with ``weights_only=False`` (running
    the file's pickled code) and puts the actual cause last; cutting it to a prefix kept the advice
    and lost the cause, so report the cause only.
    """
    import pickle
    import re

    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        cause = text.split("WeightsUnpickler error:", 1)[-1].strip() if "WeightsUnpickler error:" in text else ""
        cause = re.split(r"\.\s|\n", cause, maxsplit=1)[0][:150]
        kind = "it pickles Python objects (a whole model saved with torch.save(model)?)" \
            if cause.startswith("Unsupported global") else "corrupt or not a torch file"
        return f"{kind}: {cause}" if cause else kind
    first = re.split(r"\.\s|\n", text.strip(), maxsplit=1)[0][:200]
    return f"{type(e).__name__}: {first}"


def strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the ResNet trunk's keys, dropping wrappers such as ``module.`` or ``backbone.body.``."""
    anchors = [k[: -len("conv1.weight")] for k in sd if k.endswith("conv1.weight") and "layer" not in k]
    if not anchors:
        return sd
    prefix = min(anchors, key=len)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


@functools.lru_cache(maxsize=None)  # ~0.2 s per variant even on meta; an error lists all variants
def _expected_shapes(spec: BackboneSpec) -> dict[str, tuple]:
    from torchvision.models.resnet import ResNet

    with torch.device("meta"):
        net = ResNet(spec.block, list(spec.layers), groups=spec.groups, width_per_group=spec.width_per_group)
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith("fc.")}


def guess_architecture(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the registered backbone whose trunk keys and shapes equal the file's, if any."""
    have = {k: tuple(v.shape) for k, v in sd.items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    for name in list_backbones():
        want = {k: s for k, s in _expected_shapes(get_spec(name)).items() if not k.endswith("num_batches_tracked")}
        if want == have:
            return name
    return None


def fit_stem(sd: Mapping[str, torch.Tensor], conv1: nn.Conv2d, source: str) -> dict[str, torch.Tensor]:
    """``sd`` with its ``conv1.weight`` fitted to ``conv1``, as timm does when it loads pretrained weights.

    Other input channels: RGB filters summed for 1 channel, else repeated and scaled by 3/N
    (``timm.models.adapt_input_conv``). A 7×7 filter for the 3×3 CIFAR stem cannot be adapted: it is
    left out, and the log says that conv1 keeps its random initialisation.
    """
    w = sd.get("conv1.weight")
    if w is None or w.shape == conv1.weight.shape or w.dim() != 4:
        return dict(sd)
    sd = dict(sd)
    if tuple(w.shape[2:]) != tuple(conv1.weight.shape[2:]):
        sd["conv1.weight"] = conv1.weight.detach().clone()  # the model's own initialisation loads back
        log.warning(f"{source}: conv1 is {w.shape[2]}×{w.shape[3]} in the file but {conv1.kernel_size[0]}×"
                    f"{conv1.kernel_size[1]} in this stem; conv1 keeps its random initialisation "
                    "(every other layer loads)")
        return sd
    if w.shape[0] == conv1.out_channels and w.shape[1] != conv1.in_channels:
        from timm.models import adapt_input_conv

        sd["conv1.weight"] = adapt_input_conv(conv1.in_channels, w)
    return sd


def load_trunk_weights(module: nn.Module, sd: Mapping[str, torch.Tensor], arch: str, source: str) -> None:
    """Load ``sd`` into a backbone whose keys follow torchvision's layout.

    Classifier keys (``fc.*``) and stages the module does not build are ignored. Anything else
    that does not fit raises one :class:`WeightsError` listing it.
    """
    own = module.state_dict()
    built_stages = {k.split(".")[0] for k in own}
    full, sd = sd, {k: v for k, v in sd.items()
          if not k.startswith("fc.") and (not k.startswith("layer") or k.split(".")[0] in built_stages)}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {'; '.join(items[:3])})")
        guess = guess_architecture(full)
        hint = (f"; the file looks like {guess}: pass --backbone {guess} (create_backbone({guess!r}, …))"
                if guess and guess != arch else "")
        raise WeightsError(f"weights {source} do not fit {arch}: {', '.join(parts)}{hint}")
    module.load_state_dict(sd, strict=False)
