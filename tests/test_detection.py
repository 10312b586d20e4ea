"""Detection: both Faster R-CNN heads, freezing, COCO loading, masks → COCO, metrics, TFA few-shot."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_backbones import UserError
from tasks.data.io import DataError
from tasks.detection.coco import CocoDetection, load_coco, sample_shots
from tasks.detection.config import DetectionConfig
from tasks.detection.convert import masks_to_coco
from tasks.detection.demo import write_demo
from tasks.detection.heads.predictor import BoxPredictor, transfer_rows
from tasks.detection.metrics import coco_box_metrics, to_coco_results
from tasks.detection.model import build_detector
from tasks.detection.task import DetectionTask
from tasks.detection.visualize import MIN_SIDE, PALETTE
from tasks.detection.transforms import train_transform
from tasks.engine.runtime import Runtime

TINY = dict(min_size=64, anchor_sizes=(16, 32, 64, 128, 256), roi_batch_size=16, proposals=20)


def tiny_batch():
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0], [50.0, 10.0, 78.0, 30.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # a negative image
    return images, targets


def step(model, lr: float = 0.1):
    """One SGD step on the tiny batch; returns the loss dict."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = model(*tiny_batch())
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    return losses


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, model) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


# ---- models ---------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["fpn", "c4"])
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_heads_train_step_and_inference(head, backbone):
    torch.manual_seed(0)
    small = {"roi_pool_size": 7} if backbone == "resnet50" else {}  # keeps the C4 stage 5 cheap on CPU
    model = build_detector(backbone, None, head, num_classes=3, **TINY, **small)
    losses = step(model, lr=0.0)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"trainable parameters without gradient: {no_grad[:5]}"
    model.eval()
    images, _ = tiny_batch()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, im in zip(out, images):
        h, w = im.shape[1:]
        b = o["boxes"]
        assert b.shape[1] == 4 and len(b) == len(o["scores"]) == len(o["labels"]) > 0
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert set(o["labels"].tolist()) <= {1, 2}


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_boxes_stay_float32_under_bfloat16_autocast(head):
    # torchvision decodes boxes in the deltas' dtype; bf16 would snap coordinates to a coarse grid.
    torch.manual_seed(0)
    model = build_detector("resnet18", None, head, num_classes=3, roi_pool_size=4, **TINY).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 convs are slow on most CPUs
        out = model(tiny_batch()[0])
    assert out[0]["boxes"].dtype == out[0]["scores"].dtype == torch.float32
    assert (out[0]["boxes"] != out[0]["boxes"].round()).any()  # not snapped to integers or coarser


@pytest.mark.parametrize("backbone,c4,c5", [("resnet18", 256, 512), ("resnet50", 1024, 2048)])
def test_c4_channels_come_from_the_backbone(backbone, c4, c5):
    model = build_detector(backbone, None, "c4", num_classes=2, **TINY)
    assert model.backbone.out_channels == c4
    assert model.rpn.head.conv[0][0].in_channels == c4
    assert model.roi_heads.box_head.out_channels == c5 == model.box_predictor.cls_score.in_features


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    """A torchvision resnet18 state dict with distinctive (random) weights, as a user's file."""
    import torchvision

    torch.manual_seed(123)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return path


def test_c4_box_head_is_the_backbones_stage5(resnet18_file):
    sd = torch.load(resnet18_file, weights_only=True)
    model = build_detector("resnet18", str(resnet18_file), "c4", num_classes=3, **TINY)
    res5 = model.roi_heads.box_head.res5.state_dict()
    assert res5 and all(torch.equal(v, sd[f"layer4.{k}"]) for k, v in res5.items())
    trunk = model.backbone.state_dict()
    assert "layer4.0.conv1.weight" not in trunk  # stage 5 lives in the head only
    assert all(torch.equal(v, sd[k]) for k, v in trunk.items())
    assert model.preprocessing.source == str(resnet18_file)
    # The weights' mean/std drive the detector's own normalisation.
    assert model.transform.image_mean == list(model.preprocessing.mean)


def test_fpn_loads_the_backbone_file(resnet18_file):
    sd = torch.load(resnet18_file, weights_only=True)
    model = build_detector("resnet18", str(resnet18_file), "fpn", num_classes=3, **TINY)
    body = model.backbone.body.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in body.items())
    assert model.transform.min_size == (64,) and model.transform.max_size == round(64 * 1333 / 800)


def test_c4_freezing_trunk_stages_trains_stage5():
    torch.manual_seed(0)
    model = build_detector("resnet18", None, "c4", num_classes=3, freeze_stages=2, **TINY)
    before = snapshot(model)
    step(model)
    diff = changed(before, model)
    frozen = [k for k in before if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1",
                                                  "backbone.layer2"))]
    assert frozen and not diff & set(frozen), "frozen trunk stages (weights or BN stats) changed"
    assert any(k.startswith("backbone.layer3.") and k.endswith("weight") for k in diff)
    assert any(k.startswith("roi_heads.box_head.res5.") and k.endswith("conv1.weight") for k in diff)
    assert any(k.startswith("roi_heads.box_head.res5.") and k.endswith("running_mean") for k in diff)


def test_c4_freeze_stages_4_also_freezes_stage5():
    model = build_detector("resnet18", None, "c4", num_classes=3, freeze_stages=4, **TINY)
    before = snapshot(model)
    step(model)
    diff = changed(before, model)
    assert not {k for k in diff if k.startswith(("backbone.", "roi_heads.box_head."))}
    assert any(k.startswith("rpn.") for k in diff) and any(k.startswith("roi_heads.box_predictor") for k in diff)


@pytest.mark.parametrize("head", ["fpn", "c4"])
@pytest.mark.parametrize("n", [0, 1, 3, 4])
def test_trainable_parameter_counts_per_freeze_setting(head, n):
    model = build_detector("resnet18", None, head, num_classes=3, freeze_stages=n, **TINY)
    ref = build_detector("resnet18", None, head, num_classes=3, **TINY)
    stages = ["conv1", "bn1"] + [f"layer{i}" for i in range(1, 5)]
    frozen_names = stages[: n + 2] if n else []
    prefix = "backbone.body." if head == "fpn" else "backbone."
    expected_frozen = sum(p.numel() for k, p in ref.named_parameters()
                          if any(k.startswith(prefix + s + ".") for s in frozen_names)
                          or (head == "c4" and n == 4 and k.startswith("roi_heads.box_head.res5.")))
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == expected_frozen
    assert (frozen > 0) == (n > 0)


def test_pretrained_parameters_include_c4_stage5():
    model = build_detector("resnet18", None, "c4", num_classes=3, **TINY)
    ids = {id(p) for p in model.pretrained_parameters()}
    assert all(id(p) in ids for p in model.roi_heads.box_head.parameters())
    assert all(id(p) not in ids for p in model.rpn.parameters())
    fpn = build_detector("resnet18", None, "fpn", num_classes=3, **TINY)
    ids = {id(p) for p in fpn.pretrained_parameters()}
    assert all(id(p) in ids for p in fpn.backbone.body.parameters())
    assert all(id(p) not in ids for p in fpn.backbone.fpn.parameters())  # new layers get the head LR


def test_fpn_anchor_sizes_must_match_levels():
    with pytest.raises(UserError, match="one size per FPN level"):
        build_detector("resnet18", None, "fpn", num_classes=3, min_size=64, anchor_sizes=(32, 64))


# ---- data ---------------------------------------------------------------------------------
def write_coco(root: Path, images: list[tuple[str, int, int]], annotations: list[dict],
               categories=({"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}), split: str = "train",
               create: bool = True) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    entries = []
    for i, (name, w, h) in enumerate(images, start=1):
        if create:
            Image.fromarray(np.full((h, w, 3), 90 + 10 * i, np.uint8)).save(root / "images" / name)
        entries.append({"id": i, "file_name": name, "width": w, "height": h})
    anns = [{"id": k + 1, "iscrowd": 0, **a} for k, a in enumerate(annotations)]
    path = root / "annotations" / f"{split}.json"
    path.write_text(json.dumps({"images": entries, "annotations": anns, "categories": list(categories)}))
    return path


def test_coco_clips_and_drops_degenerate_boxes(tmp_path, caplog):
    caplog.set_level("INFO")
    ann = write_coco(tmp_path, [("a.png", 40, 30), ("b.png", 20, 20)], [
        {"image_id": 1, "category_id": 3, "bbox": [-5, 2, 20, 10]},   # clipped on the left
        {"image_id": 1, "category_id": 7, "bbox": [30, 20, 50, 50]},  # clipped right and bottom
        {"image_id": 1, "category_id": 7, "bbox": [5, 5, 0, 8]},      # zero width: dropped
        {"image_id": 1, "category_id": 3, "bbox": [45, 5, 5, 5]},     # wholly outside: dropped
        {"image_id": 1, "category_id": 3, "bbox": [3, 4, 5, -2]},     # negative height: dropped
    ])
    split = load_coco(ann, [tmp_path / "images"])
    assert "clipped 2 box(es)" in caplog.text
    assert [a["bbox"] for a in split.annotations[1]] == [[0, 2, 15, 12], [30, 20, 40, 30]]
    assert split.annotations[2] == []  # image without boxes stays, as a negative
    ds = CocoDetection(split, ["cat", "dog"])
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32 and image.max() <= 1
    assert target["labels"].tolist() == [1, 2] and target["image_id"] == 1
    assert ds.category_id_of == {1: 3, 2: 7}
    assert ds[1][1]["boxes"].shape == (0, 4)


def test_coco_dropped_count_is_printed(tmp_path, caplog):
    caplog.set_level("INFO")
    ann = write_coco(tmp_path, [("a.png", 40, 30)], [{"image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 8]}])
    load_coco(ann, [tmp_path / "images"])
    assert "dropped 1 of zero or negative size" in caplog.text


def test_coco_missing_image_names_it(tmp_path):
    ann = write_coco(tmp_path, [("present.png", 20, 20)], [])
    write_coco(tmp_path, [("present.png", 20, 20), ("gone.jpg", 20, 20)], [], create=False)
    with pytest.raises(DataError, match=r"'gone\.jpg' not found"):
        load_coco(ann, [tmp_path / "images"])


def test_coco_unknown_category_names_it(tmp_path):
    ann = write_coco(tmp_path, [("a.png", 20, 20)], [{"image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(DataError, match=r"annotation 1 has category_id 5.*ids \[3, 7\]"):
        load_coco(ann, [tmp_path / "images"])


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('{"images": []}', "not COCO"),
    ('{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}], '
     '"annotations": [{"id": 1, "image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]}]}', "image_id 9"),
    ('{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}], '
     '"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]}', "4 numbers"),
    ('{"images": [], "categories": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}]}', "unique"),
])
def test_coco_bad_json(tmp_path, content, match):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_coco(path, [tmp_path / "images"])


def test_images_are_looked_up_in_split_folder_then_root(tmp_path):
    (tmp_path / "train").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "train" / "x.png")
    write_coco(tmp_path, [("x.png", 10, 10)], [], create=False)
    task = DetectionTask(DetectionConfig(data=str(tmp_path), weights=None), run_dir=tmp_path / "run")
    train, val = task._splits(tmp_path)  # no val.json: one image held out
    assert [im["path"] for im in train.images + val.images] == [tmp_path / "train" / "x.png"]


def test_training_augmentation_is_seeded_and_keeps_boxes_inside(tmp_path):
    root = write_demo(tmp_path / "demo", seed=0, n_train=4, n_val=1)
    split = load_coco(root / "annotations" / "train.json", [root / "images"])
    ds = CocoDetection(split, ["circle", "square", "triangle"], train_transform(), seed=5, train_size=(96, 160))
    ds.set_epoch(3)
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert max(a[0].shape[1:]) <= 160 and min(a[0].shape[1:]) <= 96  # shrunk like the model would
    outs = [ds[1][0] for ds.epoch in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # epochs differ
    for i in range(len(ds)):
        img, t = ds[i]
        h, w = img.shape[1:]
        assert (t["boxes"] >= 0).all() and (t["boxes"][:, [2, 3]] <= torch.tensor([w, h])).all()


def test_demo_is_deterministic_with_tight_boxes(tmp_path):
    a = write_demo(tmp_path / "a", seed=3, n_train=5, n_val=2)
    b = write_demo(tmp_path / "b", seed=3, n_train=5, n_val=2)
    c = write_demo(tmp_path / "c", seed=4, n_train=5, n_val=2)
    ja, jb, jc = ((r / "annotations" / "train.json").read_text() for r in (a, b, c))
    assert ja == jb and ja != jc
    assert (a / "images" / "00001.png").read_bytes() == (b / "images" / "00001.png").read_bytes()
    coco = json.loads(ja)
    ann = coco["annotations"][0]
    im = np.asarray(Image.open(a / "images" / coco["images"][ann["image_id"] - 1]["file_name"]))
    x, y, w, h = (int(v) for v in ann["bbox"])
    assert w >= 16 and h >= 16 and im.shape[0] == 128


def test_few_shot_sampling_is_seeded_and_per_class(tmp_path):
    root = write_demo(tmp_path / "demo", seed=0, n_train=20, n_val=1)
    split = load_coco(root / "annotations" / "train.json", [root / "images"])
    sub, record = sample_shots(split, 2, seed=0)
    again, record2 = sample_shots(split, 2, seed=0)
    other, record3 = sample_shots(split, 2, seed=1)
    assert record == record2 and record["annotation_ids"] != record3["annotation_ids"]
    assert {k: len(v) for k, v in record["annotation_ids"].items()} == {"circle": 2, "square": 2, "triangle": 2}
    assert sub.num_boxes == 6 and sorted(im["id"] for im in sub.images) == record["image_ids"]
    kept = {a["id"] for anns in sub.annotations.values() for a in anns}
    assert kept == {i for ids in record["annotation_ids"].values() for i in ids}


# ---- masks → COCO ------------------------------------------------------------------------------
def test_masks_to_coco(tmp_path):
    from pycocotools import mask as mask_utils

    masks, images = tmp_path / "masks", tmp_path / "images"
    masks.mkdir()
    images.mkdir()
    m = np.zeros((30, 40), np.uint8)
    m[2:10, 3:13] = 1    # 10 wide, 8 high
    m[15:30, 20:40] = 2  # touches the border
    Image.fromarray(m).save(masks / "a.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(masks / "b.png")  # an image with no object
    for stem in "ab":
        Image.new("RGB", (40, 30)).save(images / f"{stem}.jpg")
    out = tmp_path / "ann" / "train.json"
    summary = masks_to_coco(masks, out, images, ["cell"])
    assert summary == {"images": 2, "annotations": 2, "categories": {"cell": 2}, "empty_images": 1,
                       "out": str(out)}
    coco = json.loads(out.read_text())
    assert coco["categories"] == [{"id": 1, "name": "cell"}]
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "b.jpg"]
    a1, a2 = coco["annotations"]
    assert a1["bbox"] == [3, 2, 10, 8] and a1["area"] == 80 and a2["bbox"] == [20, 15, 20, 15]
    rle = dict(a2["segmentation"], counts=a2["segmentation"]["counts"].encode())
    assert np.array_equal(mask_utils.decode(rle), (m == 2).astype(np.uint8))
    # The result loads as training data.
    split = load_coco(out, [images])
    assert split.annotations[1][0]["bbox"] == [3, 2, 13, 10]


def test_masks_to_coco_category_folders_and_errors(tmp_path):
    masks = tmp_path / "masks"
    for cat, value in (("cat", 1), ("dog", 1)):
        (masks / cat).mkdir(parents=True)
        m = np.zeros((8, 8), np.uint8)
        m[1:4, 1:4] = value
        Image.fromarray(m).save(masks / cat / "x.png")
    summary = masks_to_coco(masks, tmp_path / "out.json", category_names=["dog", "cat"])
    coco = json.loads((tmp_path / "out.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]
    assert summary["images"] == 1 and summary["categories"] == {"dog": 1, "cat": 1}
    with pytest.raises(DataError, match="no mask folder .*bird"):
        masks_to_coco(masks, tmp_path / "o.json", category_names=["bird"])
    with pytest.raises(DataError, match="no image x"):
        (tmp_path / "imgs").mkdir()
        masks_to_coco(masks, tmp_path / "o.json", tmp_path / "imgs")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.ones((4, 4), np.uint8)).save(flat / "y.png")
    with pytest.raises(DataError, match="share one category"):
        masks_to_coco(flat, tmp_path / "o.json", category_names=["a", "b"])


# ---- metrics --------------------------------------------------------------------------------
def gt_dict():
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in (1, 2)]
    boxes = [(1, 3, [10, 10, 20, 30]), (1, 7, [50, 50, 40, 40]), (2, 3, [5, 60, 8, 8])]
    anns = [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for k, (i, c, b) in enumerate(boxes)]
    return {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}


def test_to_coco_results_leaves_the_output_unchanged():
    out = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "labels": torch.tensor([2]), "scores": torch.tensor([0.9])}
    res = to_coco_results(out, image_id=5, category_id_of={1: 3, 2: 7})
    assert res == [{"image_id": 5, "category_id": 7, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.9}]
    assert out["boxes"].tolist() == [[10.0, 20.0, 30.0, 60.0]]


def test_perfect_predictions_score_ap_one():
    gt = gt_dict()
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    m = coco_box_metrics(gt, perfect)
    assert [m[k] for k in ("map", "ap50", "ap75", "ap_small", "ap_medium")] == pytest.approx([1.0] * 5)
    assert m["ap_large"] == -1.0  # no large ground truth
    wrong = [dict(d, category_id=7 if d["category_id"] == 3 else 3) for d in perfect]
    assert coco_box_metrics(gt, wrong)["ap50"] == 0.0
    shifted = [dict(d, bbox=[d["bbox"][0] + d["bbox"][2] * 0.3] + d["bbox"][1:]) for d in perfect]
    s = coco_box_metrics(gt, shifted)
    assert s["ap50"] == pytest.approx(1.0) and s["ap75"] < 0.9 and s["map"] < 0.9
    assert coco_box_metrics(gt, [])["ap50"] == 0.0


class GroundTruthModel(torch.nn.Module):
    """Returns each image's ground truth as detections (looked up by image size)."""

    def __init__(self, ds: CocoDetection) -> None:
        super().__init__()
        self.by_size = {}
        for i in range(len(ds)):
            img, t = ds[i]
            self.by_size[tuple(img.shape[1:])] = t

    def forward(self, images):
        return [{"boxes": self.by_size[tuple(im.shape[1:])]["boxes"],
                 "labels": self.by_size[tuple(im.shape[1:])]["labels"],
                 "scores": torch.ones(len(self.by_size[tuple(im.shape[1:])]["labels"]))} for im in images]


def test_task_evaluate_maps_labels_back_to_category_ids(tmp_path):
    write_coco(tmp_path, [("a.png", 40, 30), ("b.png", 50, 50)], [
        {"image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 10]},
        {"image_id": 2, "category_id": 3, "bbox": [20, 20, 20, 20]},
        {"image_id": 2, "category_id": 7, "bbox": [1, 1, 8, 12]}], split="val")
    task = DetectionTask(DetectionConfig(weights=None))
    task.categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    ds = task.eval_dataset(str(tmp_path))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=task.collate_fn())
    m = task.evaluate(GroundTruthModel(ds), loader, Runtime.create("cpu"))
    assert m["ap50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    task.save_visuals(None, loader, Runtime.create("cpu"), tmp_path / "vis", epoch=1)
    drawn = np.asarray(Image.open(tmp_path / "vis" / "val_b.png"))
    k = math.ceil(MIN_SIDE / 50)  # small images are drawn enlarged, labels readable
    assert drawn.shape == (50 * k, 50 * k, 3)
    assert tuple(drawn[30 * k, 40 * k - 1]) == PALETTE[1]  # right edge of the cat box [20, 20, 40, 40], label 1



def test_sharded_evaluation_gathers_to_the_single_process_metrics(tmp_path, monkeypatch):
    """Under torchrun each process detects on its block of the val set; COCO evaluation must score the
    gathered results (rank 0's block alone holds image a only, whose one detection misses: AP 0)."""
    import tasks.detection.task as det_task
    from tasks.engine.batching import Shard

    write_coco(tmp_path, [("a.png", 40, 30), ("b.png", 50, 50)], [
        {"image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 10]},
        {"image_id": 2, "category_id": 7, "bbox": [1, 1, 8, 12]}], categories=[{"id": 7, "name": "dog"}], split="val")
    task = DetectionTask(DetectionConfig(weights=None))
    task.categories = [{"id": 7, "name": "dog"}]
    ds = task.eval_dataset(str(tmp_path))
    model = GroundTruthModel(ds)
    a = model.by_size[(30, 40)]
    model.by_size[(30, 40)] = {**a, "boxes": a["boxes"] + 20}  # image a: a miss; image b: a hit
    rt, collate = Runtime.create("cpu"), task.collate_fn()
    single = task.evaluate(model, torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=collate), rt)
    assert single["ap50"] == pytest.approx(0.25, abs=0.01)  # a's miss ranks first (a tie, image order), then b's hit

    def shard(rank):
        return torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=collate, sampler=Shard(len(ds), 2, rank))

    rank1 = []
    monkeypatch.setattr(det_task, "gather_objects", lambda obj: rank1.append(obj) or [obj])
    task.evaluate(model, shard(1), rt)
    monkeypatch.setattr(det_task, "gather_objects", lambda obj: [obj, rank1[0]])
    assert task.evaluate(model, shard(0), rt) == single

# ---- few-shot (TFA) ---------------------------------------------------------------------------
def test_cosine_predictor_scores_are_bounded():
    p = BoxPredictor(32, num_classes=4, cosine_scale=20.0)
    scores, deltas = p(torch.randn(10, 32) * 100)
    assert scores.abs().max() <= 20.0 + 1e-4 and deltas.shape == (10, 16)
    assert p.cls_score.bias is None


def test_transfer_rows_keeps_background_and_matching_classes():
    src = BoxPredictor(8, num_classes=3)  # background, a, b
    torch.nn.init.normal_(src.cls_score.weight)
    torch.nn.init.normal_(src.bbox_pred.weight)
    dst = BoxPredictor(8, num_classes=3, cosine_scale=20.0)  # background, b, c
    fresh = dst.cls_score.weight.detach().clone()
    kept = transfer_rows(dst, src.state_dict(), ["a", "b"], ["b", "c"])
    assert kept == ["b"]
    w, sw = dst.cls_score.weight, src.cls_score.weight
    assert torch.equal(w[0], sw[0]) and torch.equal(w[1], sw[2]) and torch.equal(w[2], fresh[2])
    assert torch.equal(dst.bbox_pred.weight[4:8], src.bbox_pred.weight[8:12])


def test_train_only_predictor_changes_only_the_predictor():
    torch.manual_seed(0)
    model = build_detector("resnet18", None, "fpn", num_classes=3, cosine_scale=20.0, **TINY)
    model.train_only_predictor()
    before = snapshot(model)
    step(model)
    diff = changed(before, model)
    assert diff and all(k.startswith("roi_heads.box_predictor.") for k in diff), sorted(diff)[:5]
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
