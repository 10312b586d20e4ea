"""``--task segmentation``: pick the parts (data, U-Net on the backbone, loss, metrics), wire them."""
from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from resnet_backbones.errors import UserError
from resnet_backbones.registry import get_spec
from resnet_backbones.weights import preprocessing_for

from ..base import Task
from ..data.io import read_rgb
from ..engine.distributed import all_reduce_sum, all_reduce_tensor_
from ..engine.runtime import Runtime
from .config import SegmentationConfig
from .data import (DEFAULT_IGNORE, LabelSpec, SegmentationDataset, check_labels, class_pixel_counts,
                   eval_transform, find_layout, pad_collate, resolve_labels, scan_masks, seeded_split,
                   train_transform)
from .demo import write_demo
from .metrics import SegmentationMetrics
from .model import build_segmentation_model, sliding_window
from .shots import few_shot_pairs
from .visuals import overlay, save_index_mask, save_panels

log = logging.getLogger(__name__)

N_VISUALS = 4


class SegmentationTask(Task):
    """Semantic segmentation with a U-Net (FPN, DeepLabV3+) decoder on a registry backbone."""

    name = "segmentation"
    primary_metric = "miou"
    gathers_metrics = True  # confusion counts and the loss are summed over the processes

    def __init__(self, cfg: SegmentationConfig, seed: int = 0, run_dir: Path | None = None) -> None:
        super().__init__(cfg, seed, run_dir)
        pre = preprocessing_for(get_spec(cfg.backbone), cfg.weights)  # metadata only, no download
        self.mean, self.std = list(pre.mean), list(pre.std)
        self.labels: LabelSpec | None = None
        self.class_names: list[str] = []
        self.class_weights: list[float] | None = None

    # ---- data ----------------------------------------------------------------------------------
    def data_root(self) -> Path:
        if self.cfg.data:
            return Path(self.cfg.data).expanduser()
        if self.run_dir is None:
            raise UserError("no --data given and no run folder to write the demo set into")
        return write_demo(self.run_dir / "demo_data", self.seed)

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        cfg = self.cfg
        layout = find_layout(self.data_root())
        train, val = layout.train, layout.val
        if val is None:
            train, val = seeded_split(train, cfg.val_fraction, self.seed)
            log.info(f"{layout.root} has no val split: holding out {len(val)} of {len(train) + len(val)} images "
                     f"(seed {self.seed}, --val-fraction {cfg.val_fraction})")
        epoch_size = len(train)
        if cfg.shots is not None:
            train = few_shot_pairs(train, cfg.shots, self.seed, self.run_dir, held_out=len(val))
        train_scan, val_scan = scan_masks(train), scan_masks(val)
        self.labels = resolve_labels(train_scan + val_scan, cfg.num_classes, cfg.ignore_index)
        self.class_names = self._class_names(layout.class_names, layout.root / "classes.txt")
        self.class_weights = self._class_weights(class_pixel_counts(train_scan, self.labels))
        crop = min(cfg.img_size, *(min(s.height, s.width) for s in train_scan))
        if crop < cfg.img_size:
            log.info(f"training crops are {crop}x{crop}: the smallest training image is smaller than "
                     f"--img-size {cfg.img_size}")
        tf = train_transform(crop, self.mean, self.std, self.labels.ignore_index, cfg.aug_scale, cfg.aug_color,
                             cfg.vflip)
        if len(train) < epoch_size:
            # An epoch still draws as many crops as the whole training split has images (the K images
            # cycled, each draw augmented anew), so --epochs is the same budget whatever --shots is.
            log.info(f"few-shot: each epoch draws {epoch_size} augmented crops from the {len(train)} image(s)")
            train = [train[i % len(train)] for i in range(epoch_size)]
        return (SegmentationDataset(train, tf, self.labels, self.seed, augment=True),
                SegmentationDataset(val, eval_transform(self.mean, self.std), self.labels))

    def collate_fn(self):
        return partial(pad_collate, ignore_index=self.labels.ignore_index if self.labels else DEFAULT_IGNORE)

    def _class_names(self, from_file: list[str] | None, file: Path) -> list[str]:
        n = self.labels.num_classes
        names, source = (self.cfg.class_names, "--class-names") if self.cfg.class_names else (from_file, str(file))
        if names is None:
            return [f"class{i}" for i in range(n)]
        if len(names) != n:
            raise UserError(f"{source} gives {len(names)} class names but the masks have {n} classes "
                            f"(0…{n - 1}); give one name per class")
        return list(names)

    def _class_weights(self, counts: np.ndarray) -> list[float] | None:
        spec = self.cfg.class_weights
        if not spec:
            return None
        n = self.labels.num_classes
        if spec == "auto":
            freq = counts / max(1, counts.sum())
            w = np.where(freq > 0, 1 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
            w = np.where(freq > 0, w / w[freq > 0].mean(), 1.0)
            log.info("class weights (auto): " + ", ".join(f"{c} {x:.2f}" for c, x in zip(self.class_names, w)))
            return [float(x) for x in w]
        try:
            w = [float(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--class-weights must be 'auto' or comma-separated numbers, got {spec!r}") from None
        if len(w) != n or any(x < 0 for x in w):
            raise UserError(f"--class-weights needs {n} non-negative numbers (one per class), got {spec!r}")
        return w

    # ---- model and loss ----------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if self.labels is None:
            raise RuntimeError("build_datasets() or load_meta() must run before build_model()")
        c = self.cfg
        return build_segmentation_model(c.backbone, self.labels.num_classes, head=c.head, weights=c.weights,
                                        freeze_stages=c.freeze_stages, norm=c.norm,
                                        decoder_channels=c.decoder_channels, full_res_skip=c.full_res_skip)

    def backbone_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return list(model.encoder.parameters())

    def loss_terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named loss terms (``ce``, ``dice``) of ``--loss``; ignored pixels count nowhere."""
        ignore = self.labels.ignore_index
        logits = logits.float()
        if not bool((target != ignore).any()):  # an all-ignored batch: no signal, not NaN
            return {"ce": logits.sum() * 0.0}
        terms = {}
        if self.cfg.loss in ("ce", "ce+dice"):
            w = torch.tensor(self.class_weights, device=logits.device) if self.class_weights else None
            terms["ce"] = F.cross_entropy(logits, target, weight=w, ignore_index=ignore)
        if self.cfg.loss in ("dice", "ce+dice"):
            import segmentation_models_pytorch as smp

            terms["dice"] = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=ignore)(logits, target)
        return terms

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss_terms(model(batch["image"]), batch["mask"])

    # ---- evaluation ----------------------------------------------------------------------------------
    def probabilities(self, model: nn.Module, images: torch.Tensor, rt: Runtime) -> torch.Tensor:
        with torch.no_grad(), rt.autocast():
            return sliding_window(model, images, self.labels.num_classes, self.cfg.tile, self.cfg.tile_overlap)

    def evaluate(self, model: nn.Module, loader: DataLoader, rt: Runtime) -> dict[str, float]:
        metrics = SegmentationMetrics(self.labels.num_classes, self.labels.ignore_index, self.class_names)
        loss_sum, n = 0.0, 0
        for batch in loader:
            batch = rt.to_device(batch)
            probs = self.probabilities(model, batch["image"], rt)
            # log-probabilities act as logits: CE and Dice see exactly these probabilities.
            loss_sum += sum(self.loss_terms(probs.clamp_min(1e-8).log(), batch["mask"]).values()).item() \
                * len(probs)
            n += len(probs)
            metrics.update(probs.argmax(1), batch["mask"])
        all_reduce_tensor_(metrics.stats)
        loss_sum, n = all_reduce_sum([loss_sum, n])
        return {**metrics.compute(), "val_loss": loss_sum / max(1, n)}

    def save_visuals(self, model: nn.Module, loader: DataLoader, rt: Runtime, out_dir: Path, epoch: int) -> None:
        rows = []
        for batch in loader:
            pred = self.probabilities(model, rt.to_device(batch["image"]), rt).argmax(1).cpu().numpy()
            for img, mask, p, (h, w) in zip(batch["image"], batch["mask"], pred, batch["size"].tolist()):
                rows.append((self._denormalise(img)[:h, :w], mask.numpy()[:h, :w], p[:h, :w]))
            if len(rows) >= N_VISUALS:
                break
        save_panels(rows[:N_VISUALS], Path(out_dir) / f"epoch_{epoch:03d}.png", self.labels.ignore_index,
                    class_names=self.class_names)

    def _denormalise(self, image: torch.Tensor) -> np.ndarray:
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        x = (image.float().cpu() * std + mean).clamp(0, 1) * 255
        return x.round().byte().permute(1, 2, 0).numpy()

    # ---- checkpoint and inference --------------------------------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        return {"num_classes": self.labels.num_classes, "ignore_index": self.labels.ignore_index,
                "binary255": self.labels.binary255, "class_names": list(self.class_names),
                "class_weights": self.class_weights, "mean": list(self.mean), "std": list(self.std)}

    def load_meta(self, meta: dict[str, Any]) -> None:
        self.labels = LabelSpec(int(meta["num_classes"]), int(meta["ignore_index"]), bool(meta["binary255"]))
        self.class_names = list(meta["class_names"])
        self.class_weights = meta.get("class_weights")
        self.mean, self.std = list(meta["mean"]), list(meta["std"])

    def eval_dataset(self, data: str) -> Dataset:
        layout = find_layout(data)
        pairs = layout.val or layout.train
        check_labels(scan_masks(pairs), self.labels)
        return SegmentationDataset(pairs, eval_transform(self.mean, self.std), self.labels)

    def predict(self, model: nn.Module, inputs: list[Path], out_dir: Path, rt: Runtime) -> list[dict]:
        """Write ``masks/<stem>.png`` (palette PNG of class indices), ``overlays/<stem>.png`` and
        ``predictions.json`` (per image: files and the share of pixels per class)."""
        out_dir = Path(out_dir)
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
        (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
        tf, records, used = eval_transform(self.mean, self.std), [], set()
        model.eval()
        for path in map(Path, inputs):
            image = read_rgb(path)
            x = rt.to_device(tf(image=image)["image"][None])
            pred = self.probabilities(model, x, rt).argmax(1)[0].cpu().numpy()
            stem, k = path.stem, 1
            while stem in used:  # same name from two folders
                stem, k = f"{path.stem}_{k}", k + 1
            used.add(stem)
            mask_path, overlay_path = out_dir / "masks" / f"{stem}.png", out_dir / "overlays" / f"{stem}.png"
            save_index_mask(pred, mask_path)
            Image.fromarray(overlay(image, pred)).save(overlay_path)
            share = np.bincount(pred.ravel(), minlength=self.labels.num_classes) / pred.size
            records.append({"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
                            "class_fraction": {n: round(float(f), 4) for n, f in zip(self.class_names, share)
                                               if f > 0}})
        (out_dir / "predictions.json").write_text(json.dumps(records, indent=1))
        return records
