"""Per task: which real images feed an exported model, what it returns, and how it is described.

A task's model already is its deployable form (classification: logits; segmentation: logits at
full resolution; detection: torchvision's Faster R-CNN, which resizes and normalises inside), so
an adapter only names inputs and outputs, picks real images from the run's data and says which
formats and layouts the model survives.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from resnet_backbones.errors import UserError

from ..base import Task

FORMATS = ("onnx", "torchscript", "exported-program")
LAYOUTS = ("nchw", "nhwc")
PRECISIONS = {"fp32": "float32", "fp16": "float16"}  # --precision → dtype of the graph's weights and input


class NHWCInput(nn.Module):
    """Takes ``(B, H, W, 3)`` images (what most image libraries and TensorRT's NHWC I/O hand over)
    and feeds the model ``(B, 3, H, W)``; the permute is part of the exported graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x.permute(0, 3, 1, 2))


class Adapter:
    """What export, quantisation and pruning need to know about one task (see the subclasses)."""

    task: ClassVar[str]
    formats: ClassVar[tuple[str, ...]] = FORMATS
    layouts: ClassVar[tuple[str, ...]] = LAYOUTS
    precisions: ClassVar[tuple[str, ...]] = tuple(PRECISIONS)
    input_names: ClassVar[tuple[str, ...]] = ("images",)
    output_names: ClassVar[tuple[str, ...]]
    batched: ClassVar[bool] = True     # a batch is one (B, 3, H, W) tensor; else a list of (3, H, W)
    quantizable: ClassVar[bool] = True
    prunable: ClassVar[bool] = True
    metric_name: ClassVar[str]
    why_not: ClassVar[str] = ""       # why the formats missing from :attr:`formats` are
    why_not_fp16: ClassVar[str] = ""  # why fp16 is missing from :attr:`precisions`

    # ---- data ----------------------------------------------------------------------------
    def val_dataset(self, task: Task, data: Path) -> Dataset:
        """What ``resnet-tasks evaluate --data`` reads: the val split (else the whole folder)."""
        return task.eval_dataset(str(data))

    def train_dataset(self, task: Task, data: Path) -> Dataset:
        """The training split seen as at evaluation (no augmentation): calibration images."""
        raise UserError(f"{self.task} has no calibration set")

    def image(self, item: Any) -> torch.Tensor:
        """The model input ``(3, H, W)`` of one dataset item."""
        return item[0]

    def batches(self, images: list[torch.Tensor], batch_size: int) -> list[Any]:
        """Model inputs: runs of same-sized images stacked, at most ``batch_size`` each."""
        if not self.batched:
            return [[im] for im in images]
        out: list[list[torch.Tensor]] = []
        for im in images:
            if out and out[-1][0].shape == im.shape and len(out[-1]) < batch_size:
                out[-1].append(im)
            else:
                out.append([im])
        return [torch.stack(run) for run in out]

    # ---- the exported graph ----------------------------------------------------------------
    def dynamic_shapes(self, dynamic: bool, layout: str = "nchw") -> tuple[dict[int, Any], ...]:
        """torch.export's spec for the one input: the batch always varies; height and width with
        ``--dynamic``."""
        from torch.export import Dim

        dims = {0: Dim("batch", min=1, max=4096)}
        if dynamic:
            dims.update(dict.fromkeys((1, 2) if layout == "nhwc" else (2, 3), Dim.DYNAMIC))
        return (dims,)

    def flatten(self, output: Any) -> list[torch.Tensor]:
        """The model's outputs as a list in :attr:`output_names` order."""
        return [output]

    def input_shape(self, example: Any, dynamic: bool, layout: str) -> list[int | str]:
        shape: list[int | str] = list(example.shape)
        shape[0] = "batch"
        if dynamic:
            h, w = (1, 2) if layout == "nhwc" else (2, 3)
            shape[h], shape[w] = "height", "width"
        return shape

    # ---- description -----------------------------------------------------------------------
    def classes(self, task: Task) -> list[str]:
        raise NotImplementedError

    def preprocessing(self, task: Task) -> dict[str, Any]:
        raise NotImplementedError


CV2_INTERPOLATION = {0: "nearest", 1: "bilinear", 2: "bicubic", 3: "area", 4: "lanczos4"}


def describe_pipeline(transform) -> list[dict[str, Any]]:
    """An albumentations pipeline as data (``A.to_dict``): the exact ops, in order, with their
    arguments; a Python consumer can rebuild it with ``A.from_dict``."""
    import albumentations as A

    ops = A.to_dict(transform)["transform"]["transforms"]
    keep = ("max_size", "height", "width", "size", "mean", "std", "max_pixel_value")
    out = []
    for op in ops:
        step = {"op": op["__class_fullname__"].split(".")[-1], **{k: v for k, v in op.items() if k in keep}}
        if "interpolation" in op:
            step["interpolation"] = CV2_INTERPOLATION.get(op["interpolation"], op["interpolation"])
        out.append(step)
    return out


class ClassificationAdapter(Adapter):
    task = "classification"
    output_names = ("logits",)
    metric_name = "top1"

    def train_dataset(self, task, data: Path) -> Dataset:
        from ..classification.arrays import is_array_source, load_array_data
        from ..classification.data import ArrayDataset, ImageFolderDataset, scan_classes

        if is_array_source(str(data)):  # IDX/CIFAR files
            train = load_array_data(str(data), task.cfg.data_root, download=False).train
            return ArrayDataset(train.images, train.labels, task.eval_transform(), channels=task.in_chans)
        root = data / "train" if (data / "train").is_dir() else data
        return ImageFolderDataset(scan_classes(root, task.cfg.nested_classes), task.classes, task.eval_transform(),
                                  channels=task.in_chans)

    def classes(self, task) -> list[str]:
        return list(task.classes)

    def preprocessing(self, task) -> dict[str, Any]:
        pre = task.preprocessing
        return {"color": "RGB" if task.in_chans == 3 else "gray (ITU-R 601 luma)" if task.in_chans == 1 else
                f"{task.in_chans} channels", "pixels": "uint8 0-255, then the pipeline below (Normalize divides by "
                "max_pixel_value, subtracts mean, divides by std)", "mean": list(pre.mean), "std": list(pre.std),
                "input_size": task.cfg.img_size, "pipeline": describe_pipeline(task.eval_transform()),
                "output": "logits over `classes` (softmax for probabilities)"}


class SegmentationAdapter(Adapter):
    task = "segmentation"
    output_names = ("logits",)
    metric_name = "miou"

    def image(self, item) -> torch.Tensor:
        return item["image"]

    def train_dataset(self, task, data: Path) -> Dataset:
        from ..segmentation.data import SegmentationDataset, eval_transform, find_layout

        return SegmentationDataset(find_layout(data).train, eval_transform(task.mean, task.std), task.labels)

    def classes(self, task) -> list[str]:
        return list(task.class_names)

    def preprocessing(self, task) -> dict[str, Any]:
        from ..segmentation.data import eval_transform

        return {"color": "RGB", "pixels": "uint8 0-255, then the pipeline below (no resize: any size; the model "
                "pads to a multiple of 32 inside and crops its output back)", "mean": list(task.mean),
                "std": list(task.std), "pipeline": describe_pipeline(eval_transform(task.mean, task.std)),
                "output": "logits (B, classes, H, W); argmax over dim 1 is the class index mask",
                "ignore_index": task.labels.ignore_index}


class DetectionAdapter(Adapter):
    """torchvision's Faster R-CNN exports through its supported path: the TorchScript-based ONNX
    exporter, one image per call, any size."""

    task = "detection"
    formats = ("onnx",)
    layouts = ("nchw",)
    precisions = ("fp32",)
    output_names = ("boxes", "labels", "scores")
    batched = False
    quantizable = False
    prunable = False
    metric_name = "ap50"
    why_not = ("torch.export cannot trace the data-dependent NMS of torchvision's Faster R-CNN, and "
               "torch.jit.script rejects the backbone's metadata classes")
    why_not_fp16 = ("torchvision's RoIAlign refuses float16 features with the float32 boxes its RPN makes; "
                    "export fp32 and let TensorRT build fp16 (trtexec --fp16)")

    def flatten(self, output) -> list[torch.Tensor]:
        (det,) = output
        return [det["boxes"], det["labels"], det["scores"]]

    def input_shape(self, example, dynamic: bool, layout: str) -> list[int | str]:
        return [3, "height", "width"]

    def classes(self, task) -> list[str]:
        return list(task.class_names)

    def preprocessing(self, task) -> dict[str, Any]:
        model_cfg = task.cfg
        return {"color": "RGB", "pixels": "float32 0-1, (3, H, W), one image per call, any size; the model "
                "resizes (min side img_size, max side 5/3 of it) and normalises (mean/std) inside",
                "mean": list(task.preprocessing.mean), "std": list(task.preprocessing.std),
                "img_size": model_cfg.img_size,
                "output": "boxes (N, 4) x1,y1,x2,y2 in input pixels; labels (N,) 1..K = classes[label - 1]; "
                          "scores (N,)"}


ADAPTERS: dict[str, Adapter] = {a.task: a for a in (ClassificationAdapter(), SegmentationAdapter(),
                                                     DetectionAdapter())}


def adapter_for(task: str) -> Adapter:
    if task not in ADAPTERS:
        raise UserError(f"deployment does not know the task {task!r}; it knows {', '.join(ADAPTERS)}")
    return ADAPTERS[task]
