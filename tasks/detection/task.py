"""Detection (Faster R-CNN FPN/C4, Mask R-CNN, RetinaNet, FCOS) and TFA few-shot detection: picks
the parts, wires them."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_backbones import Preprocessing, UserError

from ..base import Task
from ..data.io import DataError, read_rgb
from ..engine.distributed import gather_objects
from ..engine.runtime import Runtime
from .coco import CocoDetection, CocoSplit, collate, holdout, load_coco, resolve_layout, sample_shots, to_tensor
from .config import DetectionConfig
from .demo import write_demo
from .heads import HEAD_DEFAULTS
from .heads.predictor import transfer_rows
from .metrics import MASK_THRESHOLD, coco_box_metrics, to_coco_results
from .model import MAX_SIZE_RATIO, Detector, build_detector
from .pretrained import DETECTORS, detector_name, is_detector_source, load_detector_weights
from .transforms import train_transform
from .visualize import draw_boxes

log = logging.getLogger(__name__)

PREDICT_BATCH = 4
VISUALS = 4  # val images drawn each epoch
# Settings a checkpoint passed to --init-from must share with this run (they shape the weights).
ARCH_KEYS = ("backbone", "head", "head_version", "anchor_sizes", "roi_pool_size", "fpn_channels", "box_head_dim",
             "fpn_extra_from")
PREDICTOR = "roi_heads.box_predictor."
# Values of settings that older checkpoints' configs predate.
PREDATED = {"head_version": "v1"}
# Which settings exist in which detector (the others do not shape its weights).
HEAD_KEYS = {"fpn": {"head_version", "roi_pool_size", "fpn_channels", "box_head_dim"}, "c4": {"roi_pool_size"},
             "maskrcnn": {"head_version", "roi_pool_size", "fpn_channels", "box_head_dim"},
             "retinanet": {"head_version", "fpn_channels", "fpn_extra_from"}, "fcos": {"fpn_channels", "fpn_extra_from"}}


class DetectionTask(Task):
    name = "detection"
    primary_metric = "ap50"
    gathers_metrics = True  # each process detects on its shard; COCO evaluation runs on the gathered results

    def __init__(self, cfg: DetectionConfig, seed: int = 0, run_dir: Path | None = None) -> None:
        super().__init__(cfg, seed, run_dir)
        self.categories: list[dict[str, Any]] = []  # label i + 1 is categories[i]; 0 is the background
        self.preprocessing: Preprocessing | None = None
        self._drawn: list[tuple[dict, dict]] = []     # (val image, prediction) of the last evaluate()

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    # ---- data ------------------------------------------------------------------------------
    def data_root(self) -> Path:
        cfg = self.cfg
        if cfg.data is not None:
            root = Path(cfg.data)
            if not root.is_dir():
                raise DataError(f"data folder {root} not found")
            return root
        if cfg.train_annotations or cfg.val_annotations or cfg.images:
            raise UserError("--train-annotations/--val-annotations/--images need --data too "
                            "(without --data the demo set is used); e.g. --data .")
        if self.run_dir is None:
            raise UserError("the demo set is written into the run folder; pass run_dir (or --data)")
        return write_demo(self.run_dir / "demo_data", self.seed)

    def _splits(self, root: Path) -> tuple[CocoSplit, CocoSplit]:
        cfg = self.cfg
        train = load_coco(*resolve_layout(root, "train", cfg.train_annotations, cfg.images))
        val_ann, val_dirs = resolve_layout(root, "val", cfg.val_annotations, cfg.images)
        if cfg.val_annotations or val_ann.is_file():
            return train, load_coco(val_ann, val_dirs)
        log.info(f"no {val_ann}: holding out {cfg.val_fraction:.0%} of the train images for validation (seeded)")
        return holdout(train, cfg.val_fraction, self.seed)

    def build_datasets(self) -> tuple[CocoDetection, CocoDetection]:
        train, val = self._splits(self.data_root())
        self.categories = train.categories
        if self.cfg.shots is not None:
            train = self._few_shot(train)
        names = self.class_names
        log.info(f"detection data: {len(train.images)} train images ({train.num_boxes} boxes), "
                 f"{len(val.images)} val images ({val.num_boxes} boxes); {len(names)} classes: {', '.join(names)}")
        if val.num_boxes == 0:
            log.warning("the val split has no boxes, so AP is undefined (-1)")
        size = (self.cfg.img_size, round(self.cfg.img_size * MAX_SIZE_RATIO))
        masks = self.cfg.head == "maskrcnn"
        return (CocoDetection(train, names, train_transform(), self.seed, train_size=size, masks=masks),
                CocoDetection(val, names, masks=masks))

    def _few_shot(self, train: CocoSplit) -> CocoSplit:
        k = self.cfg.shots
        if k < 1:
            raise DataError(f"--shots must be at least 1, got {k}")
        subset, record = sample_shots(train, k, self.seed)
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "fewshot_subset.json").write_text(json.dumps(record, indent=1))
        log.info(f"few-shot: {k} box(es) per class on {len(subset.images)} image(s) "
                 "(ids in fewshot_subset.json); other boxes of those images are not used")
        return subset

    def collate_fn(self):
        return collate

    # ---- model -----------------------------------------------------------------------------
    def build_model(self) -> Detector:
        cfg = self.cfg
        if not self.categories:
            raise UserError("build_datasets() (or a checkpoint's meta) must set the classes before build_model()")
        # A whole torchvision detector (or a file of one), by --weights or, for TFA, by --init-from.
        detector = next((w for w in (cfg.init_from, cfg.weights) if is_detector_source(w)), None)
        init = self._init_checkpoint() if cfg.init_from and detector is None else None
        if init is not None and self.preprocessing is None:
            self.preprocessing = Preprocessing.from_dict(init["task_meta"]["preprocessing"])
        wanted = DETECTORS.get(detector_name(detector) or "")
        if wanted is not None and wanted != (cfg.head, cfg.head_version):
            raise UserError(f"{detector} is a {wanted[0]} detector of design {wanted[1]}: pass --head {wanted[0]} "
                            f"--head-version {wanted[1]}")
        if detector is not None and self.preprocessing is None:
            self.preprocessing = Preprocessing(source=str(detector))  # torchvision's detectors: ImageNet mean/std
        if cfg.norm == "frozen_bn" and cfg.weights is None and init is None and self.preprocessing is None:
            log.warning("--norm frozen_bn with random initialisation leaves the backbone without "
                        "normalisation; use --norm bn when training from scratch")
        model = build_detector(
            cfg.backbone, None if init is not None or detector is not None else cfg.weights, cfg.head,
            len(self.categories) + 1,
            min_size=cfg.img_size, freeze_stages=cfg.freeze_stages, norm=cfg.norm, anchor_sizes=cfg.anchor_sizes,
            roi_pool_size=cfg.roi_pool_size, fpn_channels=cfg.fpn_channels, box_head_dim=cfg.box_head_dim,
            rpn_batch_size=cfg.rpn_batch_size, roi_batch_size=cfg.roi_batch_size, proposals=cfg.proposals,
            cosine_scale=cfg.cosine_scale if cfg.cosine_classifier else None, preprocessing=self.preprocessing,
            fpn_extra_from=cfg.fpn_extra_from, head_version=cfg.head_version)
        self.preprocessing = model.preprocessing
        if init is not None:
            self._load_init(model, init)
        if detector is not None:
            load_detector_weights(model, detector, self.class_names)
        if cfg.train_only == "predictor":
            model.train_only_predictor()
            n = sum(p.numel() for p in model.parameters() if p.requires_grad)
            log.info(f"train-only predictor: {n:,} trainable parameters (box classifier + regressor)")
        return model

    def _init_checkpoint(self) -> dict[str, Any]:
        from ..engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(self.cfg.init_from, prefer="best")
        if ckpt["task"] != self.name:
            raise UserError(f"--init-from {ckpt['path']} is a {ckpt['task']} checkpoint; a detection one is needed "
                            "(for backbone weights use --weights)")
        src, own = _arch(ckpt["task_config"]), _arch(dataclasses.asdict(self.cfg))
        diff = [f"--{k.replace('_', '-')} {v}" for k, v in src.items() if own.get(k) != v]
        if diff:
            raise UserError(f"--init-from {ckpt['path']} was trained with {' '.join(diff)}; pass the same")
        return ckpt

    def _load_init(self, model: Detector, ckpt: dict[str, Any]) -> None:
        state = ckpt["model"]
        predictors = tuple(f"{name}." for name in model.predictor_modules)
        body = {k: v for k, v in state.items() if not k.startswith(predictors)}
        missing, unexpected = model.load_state_dict(body, strict=False)
        missing = [k for k in missing if not k.startswith(predictors) and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise UserError(f"--init-from {ckpt['path']} does not fit this model: "
                            f"{len(missing)} missing, {len(unexpected)} unexpected weights "
                            f"(e.g. {(missing + unexpected)[:3]})")
        src_names = [c["name"] for c in ckpt["task_meta"]["categories"]]
        own = model.state_dict()
        same = src_names == self.class_names
        # Class-specific layers: the box predictor's rows move by class name (TFA); the others
        # (mask logits, one-stage classifiers) load only when the classes are the same.
        fresh = [n for n in model.predictor_modules if n != PREDICTOR[:-1]
                 and not (same and all(state.get(k) is not None and state[k].shape == v.shape
                                       for k, v in own.items() if k.startswith(n + ".")))]
        model.load_state_dict({k: v for k, v in state.items() if k.startswith(predictors)
                               and not k.startswith(tuple(f"{n}." for n in fresh + [PREDICTOR[:-1]]))}, strict=False)
        kept = self.class_names if same else []
        if PREDICTOR[:-1] in model.predictor_modules:
            predictor = {k[len(PREDICTOR):]: v for k, v in state.items() if k.startswith(PREDICTOR)}
            kept = transfer_rows(model.box_predictor, predictor, src_names, self.class_names)
        new = [n for n in self.class_names if n not in kept]
        log.info(f"--init-from {ckpt['path']}: detector weights loaded; class rows kept for {len(kept)} class(es) "
                 f"{kept}, new: {new}" + (f"; initialised afresh (other classes): {', '.join(fresh)}" if fresh else ""))

    def backbone_parameters(self, model: Detector) -> list[nn.Parameter]:
        return model.pretrained_parameters()

    def training_step(self, model: Detector, batch) -> dict[str, torch.Tensor]:
        images, targets = batch
        return model(images, targets)

    # ---- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: Detector, loader, rt: Runtime) -> dict[str, float]:
        ds: CocoDetection = loader.dataset
        results: list[dict] = []
        self._drawn = []
        for images, targets in loader:
            with rt.autocast():
                outputs = model(rt.to_device(images))
            for out, target in zip(outputs, targets):
                out = _to_cpu(out)
                results += to_coco_results(out, target["image_id"], ds.category_id_of)
                if len(self._drawn) < VISUALS:
                    self._drawn.append((target, out))
        # Under torchrun every process scored its block of the set: all of them, in image order (COCOeval
        # groups by image and sorts by score, so the result equals one process's).
        results = [r for part in gather_objects(results) for r in part]
        metrics = coco_box_metrics(ds.coco_gt(), [{k: v for k, v in r.items() if k != "segmentation"}
                                                  for r in results])
        if ds.masks:
            metrics.update(coco_box_metrics(ds.coco_gt(), results, iou_type="segm"))
        return metrics

    def save_visuals(self, model, loader, rt, out_dir: Path, epoch: int) -> None:
        """Val images with predictions (score ≥ --draw-score) and ground truth in white."""
        out_dir.mkdir(parents=True, exist_ok=True)
        images = {im["id"]: im for im in loader.dataset.split.images}
        for target, out in self._drawn:
            im = images[target["image_id"]]
            self._draw(read_rgb(im["path"]), out, gt=target["boxes"]).save(out_dir / f"val_{Path(im['file_name']).stem}.png")

    def _draw(self, image, out: dict[str, torch.Tensor], gt=None):
        keep = out["scores"] >= self.cfg.draw_score
        labels = out["labels"][keep].tolist()
        masks = out["masks"][keep][:, 0] >= MASK_THRESHOLD if "masks" in out else None
        return draw_boxes(image, out["boxes"][keep], [self.class_names[i - 1] for i in labels],
                          out["scores"][keep], labels, gt_boxes=gt, masks=masks)

    # ---- checkpoint and inference ------------------------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        return {"categories": [dict(c) for c in self.categories], "preprocessing": self.preprocessing.as_dict()}

    def load_meta(self, meta: dict[str, Any]) -> None:
        self.categories = [dict(c) for c in meta["categories"]]
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])

    @classmethod
    def from_checkpoint(cls, cfg: DetectionConfig, meta: dict[str, Any], seed: int = 0) -> "DetectionTask":
        # The checkpoint holds every weight: --init-from must not be read again.
        return super().from_checkpoint(dataclasses.replace(cfg, init_from=None), meta, seed)

    def eval_dataset(self, data: str) -> CocoDetection:
        """``DATA`` laid out as for training (its val split, else train), or a COCO JSON file."""
        p = Path(data)
        if p.is_file():
            ann, dirs = p, [p.parent.parent / "images", p.parent.parent, p.parent]
        else:
            ann, dirs = resolve_layout(p, "val")
            if not ann.is_file():
                ann, dirs = resolve_layout(p, "train")
        if not ann.is_file():
            raise DataError(f"no annotations in {data}: expected {p}/annotations/val.json or train.json, "
                            "or pass the JSON file itself")
        return CocoDetection(load_coco(ann, dirs), self.class_names, masks=self.cfg.head == "maskrcnn")

    @torch.no_grad()
    def predict(self, model: Detector, inputs: list[Path], out_dir: Path, rt: Runtime) -> list[dict]:
        """Writes ``detections.json`` (COCO results + ``file_name``) and one PNG with boxes per image."""
        out_dir.mkdir(parents=True, exist_ok=True)
        category_id_of = {i + 1: c["id"] for i, c in enumerate(self.categories)}
        results, records, used = [], [], set()
        for start in range(0, len(inputs), PREDICT_BATCH):
            chunk = list(inputs[start:start + PREDICT_BATCH])
            arrays = [read_rgb(p) for p in chunk]
            with rt.autocast():
                outputs = model(rt.to_device([to_tensor(a) for a in arrays]))
            for k, (path, image, out) in enumerate(zip(chunk, arrays, outputs)):
                out = _to_cpu(out)
                image_id = start + k + 1
                dets = to_coco_results(out, image_id, category_id_of)
                for d, label in zip(dets, out["labels"].tolist()):
                    d.update(file_name=str(path), category_name=self.class_names[label - 1])
                results += dets
                name = f"{Path(path).stem}.png"
                if name in used:
                    name = f"{Path(path).stem}_{image_id}.png"
                used.add(name)
                self._draw(image, out).save(out_dir / name)
                records.append({"file": str(path), "image_id": image_id, "detections": len(dets),
                                "drawn": int((out["scores"] >= self.cfg.draw_score).sum()),
                                "png": str(out_dir / name)})
        (out_dir / "detections.json").write_text(json.dumps(results))
        return records


def _to_cpu(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cpu = {"boxes": out["boxes"].float().cpu(), "scores": out["scores"].float().cpu(), "labels": out["labels"].cpu()}
    if "masks" in out:
        cpu["masks"] = out["masks"].float().cpu()
    return cpu


def _arch(cfg: dict[str, Any]) -> dict[str, str]:
    """The settings that shape the weights, as flag values (``None`` → the head's default)."""
    head = cfg["head"]
    defaults = HEAD_DEFAULTS.get(head, {})
    keys = [k for k in ARCH_KEYS if k in ("backbone", "head") or k in HEAD_KEYS[head]
            or (k == "anchor_sizes" and head != "fcos")]  # FCOS's "anchors" are its strides
    out = {}
    for k in keys:
        v = next((x for x in (cfg.get(k), defaults.get(k), PREDATED.get(k)) if x is not None), None)
        out[k] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return out
