"""Classification and few-shot classification: picks the parts, wires them to the engine."""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from resnet_backbones import Preprocessing, create_backbone

from ..base import Task
from ..data.io import DataError, read_rgb
from ..data.seeding import stratified_pick
from ..engine.callbacks import FreezeSchedule
from ..engine.distributed import all_reduce_sum, gather_objects
from ..engine.runtime import Runtime
from .config import ClassificationConfig
from .arrays import is_array_source, load_array_data, split_off
from .data import (ArrayDataset, ImageFolderDataset, Sample, balanced_sample_weights, class_weights, eval_transform,
                   load_folders, scan_classes, to_channels, train_transform)
from .demo import make_classification_demo
from .model import ImageClassifier, extract_features
from .visuals import save_confusion_matrix, save_prediction_grid

log = logging.getLogger(__name__)


class ClassificationTask(Task):
    name = "classification"
    primary_metric = "top1"
    gathers_metrics = True  # torchmetrics sums its states over the processes; the loss and predictions too

    def __init__(self, cfg: ClassificationConfig, seed: int = 0, run_dir: Path | None = None) -> None:
        super().__init__(cfg, seed, run_dir)
        self.classes: list[str] = []
        self.preprocessing: Preprocessing | None = None
        self.last_details: dict[str, Any] = {}
        self.class_weights: list[float] | None = None
        self.in_chans: int = cfg.in_chans or 3  # set from the data by build_datasets, or from a checkpoint
        self.data_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # array data's mean/std

    # ---- data ------------------------------------------------------------------------------
    def data_roots(self) -> list[Path]:
        if self.cfg.data:
            return [Path(d) for d in self.cfg.data]
        return [make_classification_demo(self.run_dir / "demo_data", seed=self.seed)]

    def build_datasets(self):
        arrays = [d for d in self.cfg.data or [] if is_array_source(d)]
        if arrays:
            return self._build_array_datasets(arrays)
        train, val, merge = load_folders(self.data_roots(), self.cfg.nested_classes, self.cfg.val_fraction,
                                         self.seed, self.cfg.skip_bad_images)
        if len(merge.folders) > 1:
            log.info(merge.summary())
            if self.run_dir is not None:
                (self.run_dir / "data_folders.json").write_text(json.dumps(dataclasses.asdict(merge), indent=1))
        self.classes = sorted({s.label for s in train})
        if self.cfg.shots is not None:
            train = self._few_shot(train)
        self._train_samples, self._val_samples = train, val
        self._train_labels = [s.label for s in train]
        self._set_class_weights()
        return (ImageFolderDataset(train, self.classes, self.train_transform(), self.seed, self.in_chans),
                ImageFolderDataset(val, self.classes, self.eval_transform(), self.seed, self.in_chans))

    def _build_array_datasets(self, specs: list[str]):
        """IDX/CIFAR files or a torchvision data set: its test split validates; with one split only, a
        fixed seeded share (``val_fraction``) does, and the rule and indices go to ``data_split.json``."""
        if len(self.cfg.data) > 1:
            raise DataError(f"--data {specs[0]} is an array data set (IDX, CIFAR or torchvision); it trains "
                            "alone: give one --data")
        data = load_array_data(specs[0], self.cfg.data_root, self.cfg.download)
        self.classes, self.in_chans = data.classes, self.cfg.in_chans or data.channels
        train, val = data.train, data.val
        if val is None:
            train_idx, val_idx = split_off(len(train), self.cfg.val_fraction, self.seed)
            train, val = train.take(train_idx), train.take(val_idx)
            if self.run_dir is not None:
                (self.run_dir / "data_split.json").write_text(json.dumps({
                    "source": data.source, "rule": "val = the first round(n × val_fraction) of "
                    "torch.randperm(n) seeded with sample_seed(seed, 'val-split'); train = the rest",
                    "n": len(data.train), "val_fraction": self.cfg.val_fraction, "seed": self.seed,
                    "val_indices": val_idx.tolist()}))
        if data.channels == self.in_chans:  # statistics of what the model sees (else the weights' below)
            self.data_stats = data.pixel_stats()
        log.info(f"{data.source}: {len(train)} train / {len(val)} val images, {data.channels} channel(s) "
                 f"{'x'.join(map(str, data.train.images.shape[1:3]))} px, {len(self.classes)} classes"
                 f"{'' if data.val is not None else f' (val: a seeded {self.cfg.val_fraction:g} split, data_split.json)'}")
        if self.cfg.shots is not None:
            picked, _ = stratified_pick(train.labels.tolist(), self.cfg.shots, self.seed)
            train = train.take(picked)
            log.info(f"few-shot: {self.cfg.shots} image(s) per class, {len(train)} in all")
        self._train_samples = self._val_samples = None
        self._train_labels = [self.classes[i] for i in train.labels]
        self._val_images = val.images
        self._set_class_weights()
        return (ArrayDataset(train.images, train.labels, self.train_transform(), self.seed, self.in_chans),
                ArrayDataset(val.images, val.labels, self.eval_transform(), self.seed, self.in_chans))

    def _set_class_weights(self) -> None:
        if self.cfg.class_weights:
            self.class_weights = class_weights(self.cfg.class_weights, self._train_labels, self.classes)
            log.info("class weights: " + ", ".join(f"{c} {w:.2f}" for c, w in zip(self.classes, self.class_weights)))

    def _few_shot(self, train: list[Sample]) -> list[Sample]:
        k = self.cfg.shots
        if k < 1:
            raise DataError(f"--shots must be at least 1, got {k}")
        picked, _ = stratified_pick([s.label for s in train], k, self.seed)
        chosen = [train[i] for i in picked]
        short = sorted({s.label for s in train if sum(t.label == s.label for t in chosen) < k})
        if short:
            log.info(f"few-shot: {len(short)} class(es) have fewer than {k} training images and keep all they have")
        if self.run_dir is not None:
            subset = {c: [str(s.path) for s in chosen if s.label == c] for c in self.classes}
            (self.run_dir / "fewshot_subset.json").write_text(json.dumps(
                {"shots": k, "seed": self.seed, "classes": subset}, indent=1))
        log.info(f"few-shot: {k} image(s) per class, {len(chosen)} in all (list in fewshot_subset.json)")
        return chosen

    def train_transform(self):
        return train_transform(self.cfg.img_size, self._preprocessing(), self.cfg.augment)

    def eval_transform(self):
        return eval_transform(self.cfg.img_size, self._preprocessing(), self.cfg.augment)

    def _preprocessing(self) -> Preprocessing:
        """The weights' mean/std for the model's channels; with random weights on array data, the
        data's own pixel statistics."""
        if self.preprocessing is None:
            from resnet_backbones.weights import preprocessing_for
            from resnet_backbones import get_spec

            pre = preprocessing_for(get_spec(self.cfg.backbone), self.cfg.weights).for_channels(self.in_chans)
            if self.cfg.weights is None and self.data_stats is not None:
                pre = dataclasses.replace(pre, mean=self.data_stats[0], std=self.data_stats[1], source="data")
            self.preprocessing = pre
        return self.preprocessing

    # ---- model ------------------------------------------------------------------------------
    @property
    def backbone_frozen(self) -> bool:
        return self.cfg.head == "prototype" or (self.cfg.freeze_stages == 4 and self.cfg.unfreeze_after is None)

    def build_model(self) -> nn.Module:
        freeze = 4 if self.cfg.head == "prototype" else self.cfg.freeze_stages
        if self.cfg.head == "prototype" and self.cfg.freeze_stages != 4:
            log.info("head=prototype trains nothing: the backbone is used frozen")
        # c4 costs nothing extra (c5 is computed from it) and few-shot evaluation can compare it too.
        bb = create_backbone(self.cfg.backbone, weights=self.cfg.weights, out_features=("c3", "c4", "c5"),
                             freeze_stages=freeze, norm=self.cfg.norm, in_chans=self.in_chans, stem=self.cfg.stem)
        if self.cfg.weights is not None:
            self.preprocessing = bb.preprocessing.for_channels(self.in_chans)
        model = ImageClassifier(bb, len(self.classes), self.cfg.head, self.cfg.drop_rate)
        if self.cfg.head == "prototype":
            model.head.requires_grad_(False)
        return model

    def prepare_training(self, model, train_ds, val_ds, rt: Runtime):
        if self.cfg.head in ("prototype", "imprint"):
            plain = train_ds.with_transform(val_ds.transform)
            feats, labels = extract_features(model, self._loader(plain), rt)
            model.set_prototypes(feats, labels)
            log.info(f"{self.cfg.head}: head set to the class means of {len(plain)} training images")
        if not (self.backbone_frozen and self.cfg.cache_features):
            return model, train_ds, val_ds
        # Frozen backbone: features never change, so compute them once (without augmentation)
        # and train the head alone on them.
        cached = []
        for ds in (train_ds.with_transform(val_ds.transform), val_ds):
            cached.append(TensorDataset(*extract_features(model, self._loader(ds), rt)))
        log.info(f"backbone frozen: cached features of {len(cached[0])} train / {len(cached[1])} val images")
        return model.head, cached[0], cached[1]

    def _loader(self, ds) -> DataLoader:
        return DataLoader(ds, batch_size=64, shuffle=False, num_workers=0)

    def sample_weights(self) -> list[float] | None:
        return balanced_sample_weights(self._train_labels) if self.cfg.sampler == "balanced" \
            else None

    def callbacks(self) -> list:
        return [] if self.cfg.unfreeze_after is None else [FreezeSchedule(self.cfg.unfreeze_after)]

    def training_step(self, model, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = model(x)
        if self.cfg.cosine_margin:
            inner = getattr(model, "module", model)  # under DistributedDataParallel
            logits = getattr(inner, "head", inner).with_margin(logits, y, self.cfg.cosine_margin)
        weight = torch.tensor(self.class_weights, device=logits.device) if self.class_weights else None
        return {"loss": F.cross_entropy(logits, y, weight=weight, label_smoothing=self.cfg.label_smoothing)}

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model, loader, rt: Runtime) -> dict[str, float]:
        n = len(self.classes)
        # Imported here: torchmetrics pulls in scipy.signal (≈ 1-2 s), which few-shot evaluation never needs.
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

        top1 = MulticlassAccuracy(n, average="micro")
        top5 = MulticlassAccuracy(n, top_k=5, average="micro") if n >= 5 else None
        per_class = MulticlassAccuracy(n, average="none")
        confusion = MulticlassConfusionMatrix(n)
        loss_sum, count, preds = 0.0, 0, []
        for x, y in loader:
            with rt.autocast():
                logits = model(rt.to_device(x)).float().cpu()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            count += len(y)
            score, pred = logits.softmax(1).max(1)
            preds += zip(pred.tolist(), score.tolist(), y.tolist())
            for m in (top1, top5, per_class, confusion):
                if m is not None:
                    m.update(logits, y)
        loss_sum, count = all_reduce_sum([loss_sum, count])  # the metrics' compute() sums their own states
        out = {"val_loss": loss_sum / max(1, count), "top1": top1.compute().item()}
        if top5 is not None:
            out["top5"] = top5.compute().item()
        pc, cm = per_class.compute(), confusion.compute()
        present = cm.sum(1) > 0
        out["mean_class_acc"] = pc[present].mean().item()
        self.last_details = {"per_class": {c: pc[i].item() for i, c in enumerate(self.classes) if present[i]},
                             "confusion": cm.numpy(), "predictions": [p for part in gather_objects(preds) for p in part]}
        return out

    def save_visuals(self, model, loader, rt, out_dir: Path, epoch: int) -> None:
        if not self.last_details:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        save_confusion_matrix(self.last_details["confusion"], self.classes, out_dir / "confusion_matrix.png",
                              title=f"epoch {epoch}")
        # predictions are in the validation set's order
        samples, images = getattr(self, "_val_samples", None), getattr(self, "_val_images", None)
        shown = [s.path for s in samples] if samples is not None else images
        if shown is not None and len(shown) == len(self.last_details["predictions"]):
            save_prediction_grid(shown, self.last_details["predictions"], self.classes,
                                 out_dir / "predictions.png", title=f"epoch {epoch}")
        with open(out_dir / "per_class_accuracy.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class", "accuracy"])
            w.writerows(sorted(self.last_details["per_class"].items()))

    # ---- checkpoint and inference --------------------------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "preprocessing": self._preprocessing().as_dict(),
                "in_chans": self.in_chans}

    def load_meta(self, meta: dict[str, Any]) -> None:
        self.classes = list(meta["classes"])
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.in_chans = int(meta.get("in_chans", 3))  # absent in checkpoints of earlier versions: RGB

    def eval_dataset(self, data: str):
        if is_array_source(data):  # its test split, else all of it
            arrays = load_array_data(data, self.cfg.data_root, download=False)
            split = arrays.val if arrays.val is not None else arrays.train
            if len(arrays.classes) != len(self.classes):
                raise DataError(f"{arrays.source} has {len(arrays.classes)} classes, the model {len(self.classes)}")
            return ArrayDataset(split.images, split.labels, self.eval_transform(), channels=self.in_chans)
        root = Path(data)
        split = root / "val" if (root / "val").is_dir() else root
        samples = scan_classes(split, self.cfg.nested_classes)
        return ImageFolderDataset(samples, self.classes, self.eval_transform(), channels=self.in_chans)

    @torch.no_grad()
    def predict(self, model, inputs: list[Path], out_dir: Path, rt: Runtime) -> list[dict]:
        tf = self.eval_transform()
        records = []
        k = min(5, len(self.classes))
        for path in inputs:
            x = tf(image=to_channels(read_rgb(path), self.in_chans))["image"][None]
            with rt.autocast():
                probs = model(rt.to_device(x)).float().softmax(1)[0].cpu()
            scores, idx = probs.topk(k)
            records.append({"file": str(path), "label": self.classes[idx[0]], "score": round(scores[0].item(), 4),
                            "top": [[self.classes[i], round(s.item(), 4)] for s, i in zip(scores, idx)]})
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "predictions.json").write_text(json.dumps(records, indent=1))
        with open(out_dir / "predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "label", "score"])
            w.writerows([r["file"], r["label"], r["score"]] for r in records)
        return records
