"""COCO box and mask metrics with pycocotools (the reference implementation, not a re-implementation)."""
from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch

# COCOeval.stats order for iouType="bbox" (and "segm", whose names get the prefix "segm_").
METRIC_NAMES = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
MASK_THRESHOLD = 0.5  # mask probability → binary mask, as torchvision's and detectron2's evaluation


def to_coco_results(output: dict[str, torch.Tensor], image_id: int, category_id_of: dict[int, int]) -> list[dict]:
    """One image's ``{"boxes" xyxy, "labels", "scores"}`` → COCO results (``bbox`` = [x, y, w, h])."""
    boxes = output["boxes"].detach().float().cpu()
    boxes = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # not in place: callers keep xyxy
    results = [{"image_id": image_id, "category_id": category_id_of[int(lab)],
                "bbox": [round(float(v), 2) for v in box], "score": round(float(s), 4)}
               for box, lab, s in zip(boxes, output["labels"].tolist(), output["scores"].tolist())]
    if "masks" in output:  # Mask R-CNN: (N, 1, H, W) probabilities → RLE
        from pycocotools import mask as mask_utils

        binary = (output["masks"][:, 0] >= MASK_THRESHOLD).cpu().numpy().astype("uint8")
        for r, m in zip(results, binary):
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            r["segmentation"] = rle
    return results


def coco_box_metrics(gt: dict[str, Any], results: list[dict], iou_type: str = "bbox") -> dict[str, float]:
    """mAP@[.5:.95], AP50, AP75 and AP small/medium/large of ``results`` on ``gt`` (COCO dicts).

    ``iou_type="segm"`` scores the results' masks (keys prefixed ``segm_``). pycocotools reports
    -1 for an area range without ground truth; that value is kept. No detections at all gives 0.0
    everywhere (pycocotools cannot load an empty result list).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = METRIC_NAMES if iou_type == "bbox" else tuple(f"segm_{n}" for n in METRIC_NAMES)
    if not results:
        return dict.fromkeys(names, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(names, ev.stats)}
