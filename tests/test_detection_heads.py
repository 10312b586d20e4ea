"""Mask R-CNN, RetinaNet and FCOS through the CLI (one step, evaluation, predict), segm mAP, masks
drawn, --mask-suffix, and the VOC / YOLO converters on generated files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import cli
from tasks.data.io import DataError
from tasks.detection.demo import write_demo
from tasks.detection.formats import read_class_names, voc_to_coco, yolo_to_coco
from tasks.detection.metrics import coco_box_metrics, to_coco_results

FAST = ["--weights", "none", "--img-size", "128", "--anchor-sizes", "16,32,64,128,256", "--fpn-channels", "32",
        "--box-head-dim", "64", "--roi-batch-size", "16", "--proposals", "20", "--batch-size", "3",
        "--workers", "0", "--epochs", "1"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("heads") / "data", seed=2, n_train=6, n_val=3)


@pytest.mark.parametrize("head", ["maskrcnn", "retinanet", "fcos"])
def test_new_heads_train_evaluate_and_predict(head, demo, tmp_path):
    run = tmp_path / "run"
    result = invoke("finetune", "--task", "detection", "--head", head, "--data", demo, *FAST, "--out", run)
    assert result.exit_code == 0, result.output
    last_epoch = (run / "metrics.jsonl").read_text().splitlines()[-1]
    assert "ap50" in last_epoch and ("segm_ap50" in last_epoch) == (head == "maskrcnn")
    result = invoke("evaluate", "--checkpoint", run, "--data", demo, "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= scores["ap50"] <= 1
    assert ("segm_ap50" in scores) == (head == "maskrcnn")
    out = tmp_path / "pred"
    result = invoke("predict", "--checkpoint", run, demo / "images" / "00001.png", "--out", out)
    assert result.exit_code == 0, result.output
    dets = json.loads((out / "detections.json").read_text())
    assert all(("segmentation" in d) == (head == "maskrcnn") for d in dets)
    assert (out / "00001.png").is_file()


def test_maskrcnn_needs_masks(demo, tmp_path):
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    (data / "images").symlink_to(demo / "images")
    coco = json.loads((demo / "annotations" / "train.json").read_text())
    for a in coco["annotations"]:
        a.pop("segmentation")
    (data / "annotations" / "train.json").write_text(json.dumps(coco))
    result = CliRunner().invoke(cli, ["finetune", "--task", "detection", "--head", "maskrcnn", "--data", str(data),
                                      *FAST, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "have no 'segmentation'" in result.stderr, result.output


def test_segm_metrics_of_perfect_masks():
    mask = np.zeros((20, 30), np.uint8)
    mask[4:12, 5:20] = 1
    from tasks.detection.convert import mask_annotation

    gt = {"images": [{"id": 1, "width": 30, "height": 20}], "categories": [{"id": 7, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 7, **mask_annotation(mask)}]}
    out = {"boxes": torch.tensor([[5.0, 4.0, 20.0, 12.0]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9]),
           "masks": torch.from_numpy(mask).float()[None, None]}
    results = to_coco_results(out, 1, {1: 7})
    assert coco_box_metrics(gt, results, iou_type="segm")["segm_ap50"] == pytest.approx(1.0)
    out["masks"] = torch.zeros(1, 1, 20, 30)  # right box, empty mask
    assert coco_box_metrics(gt, to_coco_results(out, 1, {1: 7}), iou_type="segm")["segm_ap50"] == 0.0


def test_masks_to_coco_with_a_suffix_feeds_maskrcnn(tmp_path):
    """PennFudan's layout: PNGImages/FudanPed00001.png and PedMasks/FudanPed00001_mask.png."""
    images, masks = tmp_path / "PNGImages", tmp_path / "PedMasks"
    images.mkdir(), masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 4):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(images / f"FudanPed{i:05d}.png")
        m = np.zeros((60, 80), np.uint8)
        m[5:30, 10:30] = 1
        m[20:55, 40:70] = 2
        Image.fromarray(m, mode="L").convert("P").save(masks / f"FudanPed{i:05d}_mask.png")
    out = tmp_path / "annotations" / "train.json"
    result = invoke("convert", "masks-to-coco", masks, "--images", images, "--out", out, "--mask-suffix", "_mask",
                    "--category", "person")
    assert result.exit_code == 0, result.output
    coco = json.loads(out.read_text())
    assert [im["file_name"] for im in coco["images"]] == ["FudanPed00001.png", "FudanPed00002.png", "FudanPed00003.png"]
    assert len(coco["annotations"]) == 6 and coco["annotations"][0]["bbox"] == [10.0, 5.0, 20.0, 25.0]
    result = CliRunner().invoke(cli, ["convert", "masks-to-coco", str(masks), "--images", str(images), "--out",
                                      str(out)])
    assert result.exit_code == 2 and "--mask-suffix" in result.stderr
    # the output trains Mask R-CNN as is
    result = invoke("finetune", "--task", "detection", "--head", "maskrcnn", "--data", tmp_path, "--images", images,
                    *FAST, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output


def write_voc(root: Path) -> None:
    root.mkdir(parents=True)
    for name, objects in (("a", [("dog", 11, 6, 30, 40, 0), ("cat", 1, 1, 10, 10, 1)]), ("b", [])):
        objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                       f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for n, x1, y1, x2, y2, d in objects)
        (root / f"{name}.xml").write_text(f"<annotation><filename>{name}.jpg</filename><size><width>64</width>"
                                          f"<height>48</height><depth>3</depth></size>{objs}</annotation>")


def test_voc_to_coco(tmp_path):
    write_voc(tmp_path / "Annotations")
    out = tmp_path / "train.json"
    result = invoke("convert", "voc-to-coco", tmp_path / "Annotations", "--out", out)
    assert result.exit_code == 0, result.output
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert [(a["category_id"], a["bbox"], a["iscrowd"]) for a in coco["annotations"]] == [
        (2, [10.0, 5.0, 20.0, 35.0], 0), (1, [0.0, 0.0, 10.0, 10.0], 1)]
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "b.jpg"]
    with pytest.raises(DataError, match="not among --category"):
        voc_to_coco(tmp_path / "Annotations", out, ["dog"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.xml").write_text("<annotation><filename>x.jpg</filename></annotation>")
    with pytest.raises(DataError, match="no <size>"):
        voc_to_coco(tmp_path / "bad", out)


def test_yolo_to_coco_boxes_polygons_and_names(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for n in ("a", "b"):
        Image.new("RGB", (100, 50)).save(images / f"{n}.png")
    (labels / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n")
    (tmp_path / "data.yaml").write_text("names: {0: cat, 1: dog}\n")
    assert read_class_names(tmp_path / "data.yaml") == ["cat", "dog"]
    out = tmp_path / "train.json"
    result = invoke("convert", "yolo-to-coco", labels, "--images", images, "--out", out, "--classes",
                    tmp_path / "data.yaml")
    assert result.exit_code == 0, result.output
    coco = json.loads(out.read_text())
    box, poly = coco["annotations"]
    assert (box["category_id"], box["bbox"]) == (2, [40.0, 15.0, 20.0, 20.0])
    assert poly["category_id"] == 1 and poly["bbox"] == pytest.approx([10.0, 10.0, 20.0, 20.0])
    assert poly["segmentation"] == [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]
    assert len(coco["images"]) == 2  # b.png has no txt: a negative image
    (labels / "a.txt").write_text("2 0.5 0.5 0.2 0.4\n")
    with pytest.raises(DataError, match="class 2 but 2 names"):
        yolo_to_coco(labels, images, out, ["cat", "dog"])
