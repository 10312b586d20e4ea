"""Classification task: data loading rules, few-shot sampling, heads, feature cache, freezing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tasks.classification.config import ClassificationConfig
from tasks.classification.data import load_splits, scan_classes
from tasks.classification.episodes import sample_episodes
from tasks.classification.fewshot import run_episodes
from tasks.classification.task import ClassificationTask
from tasks.config import TrainConfig
from tasks.data.io import DataError
from tasks.engine.trainer import fit


def make_task(data, run_dir: Path, **kw) -> ClassificationTask:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = ClassificationConfig(data=str(data), weights=None, img_size=32, **kw)
    return ClassificationTask(cfg, seed=kw.pop("seed", 0), run_dir=run_dir)


def train_cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 8, "workers": 0, "lr": 1e-3, **kw})


def test_scan_and_split(tiny_cls_data):
    train, val = load_splits(tiny_cls_data, nested=False, val_fraction=0.2, seed=0, skip_bad=False)
    assert len(train) == 24 and len(val) == 12
    assert {s.label for s in train} == {"circle", "square", "triangle", "cross"}


def test_seeded_stratified_split_without_val(tiny_cls_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_cls_data / "train", root)
    a = load_splits(root, False, 0.5, seed=3, skip_bad=False)
    b = load_splits(root, False, 0.5, seed=3, skip_bad=False)
    c = load_splits(root, False, 0.5, seed=4, skip_bad=False)
    assert [s.path for s in a[1]] == [s.path for s in b[1]]
    assert [s.path for s in a[1]] != [s.path for s in c[1]]
    per_class = {lab: sum(s.label == lab for s in a[1]) for lab in {s.label for s in a[0]}}
    assert set(per_class.values()) == {3}  # stratified: same count per class


def test_nested_classes(tmp_path, tiny_cls_data, caplog):
    caplog.set_level("INFO")
    for alphabet in ("greek", "latin"):
        for ch in ("a", "b"):
            shutil.copytree(tiny_cls_data / "train" / "circle", tmp_path / "n" / alphabet / ch)
    samples = scan_classes(tmp_path / "n", nested=True)
    assert {s.label for s in samples} == {"greek/a", "greek/b", "latin/a", "latin/b"}
    flat = scan_classes(tmp_path / "n", nested=False)  # like ImageFolder: subfolders belong to the class
    assert {s.label for s in flat} == {"greek", "latin"}
    assert "--nested-classes" in caplog.text
    with pytest.raises(DataError, match="drop --nested-classes"):
        scan_classes(tiny_cls_data / "train", nested=True)


def test_class_mismatch_is_an_error(tiny_cls_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_cls_data, root)
    shutil.rmtree(root / "val" / "cross")
    with pytest.raises(DataError, match="train and val classes differ.*cross"):
        load_splits(root, False, 0.2, 0, False)


def test_corrupt_image_error_and_skip(tiny_cls_data, tmp_path, caplog):
    caplog.set_level("INFO")
    root = tmp_path / "d"
    shutil.copytree(tiny_cls_data, root)
    bad = root / "train" / "circle" / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg.*--skip-bad-images"):
        load_splits(root, False, 0.2, 0, skip_bad=False)
    train, _ = load_splits(root, False, 0.2, 0, skip_bad=True)
    assert bad not in [s.path for s in train] and len(train) == 24
    assert "skipped 1 unreadable" in caplog.text


def test_grayscale_rgba_gif_are_read_as_rgb(tmp_path):
    from PIL import Image

    from tasks.data.io import read_rgb

    Image.new("L", (10, 8), 7).save(tmp_path / "g.png")
    Image.new("RGBA", (10, 8), (255, 0, 0, 0)).save(tmp_path / "a.png")
    Image.new("P", (10, 8)).save(tmp_path / "p.gif")
    for name in ("g.png", "a.png", "p.gif"):
        arr = read_rgb(tmp_path / name)
        assert arr.shape == (8, 10, 3) and arr.dtype.name == "uint8"
    assert read_rgb(tmp_path / "a.png")[0, 0].tolist() == [255, 255, 255]  # transparent → white


def test_few_shot_subset_is_seeded_and_saved(tiny_cls_data, tmp_path):
    subsets = []
    for i, seed in enumerate((5, 5, 6)):
        task = ClassificationTask(ClassificationConfig(data=str(tiny_cls_data), weights=None, shots=2),
                                  seed=seed, run_dir=tmp_path / str(i))
        (tmp_path / str(i)).mkdir()
        train_ds, _ = task.build_datasets()
        assert len(train_ds) == 8
        subsets.append(json.loads((tmp_path / str(i) / "fewshot_subset.json").read_text())["classes"])
        assert all(len(v) == 2 for v in subsets[-1].values())
    assert subsets[0] == subsets[1] and subsets[0] != subsets[2]


def test_frozen_stages_unchanged_and_head_trains(tiny_cls_data, tmp_path):
    task = make_task(tiny_cls_data, tmp_path / "r", freeze_stages=3)
    torch.manual_seed(0)
    fit(task, train_cfg(), run_dir=tmp_path / "r")
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    torch.manual_seed(0)  # rebuild the run's initial model
    fresh = make_task(tiny_cls_data, tmp_path / "x", freeze_stages=3)
    fresh.build_datasets()
    init = fresh.build_model().state_dict()
    trained = ckpt["model"]
    for k in init:
        same = torch.equal(init[k], trained[k])
        if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2", "backbone.layer3")):
            assert same, f"frozen {k} changed"
    assert not torch.equal(init["head.weight"], trained["head.weight"])
    assert not torch.equal(init["backbone.layer4.0.conv1.weight"], trained["backbone.layer4.0.conv1.weight"])


def test_linear_probe_uses_feature_cache(tiny_cls_data, tmp_path, caplog):
    caplog.set_level("INFO")
    task = make_task(tiny_cls_data, tmp_path / "r", freeze_stages=4)
    result = fit(task, train_cfg(epochs=2, lr=1e-2), run_dir=tmp_path / "r")
    assert "cached features of 24 train / 12 val" in caplog.text
    assert len(result["history"]) == 2 and 0 <= result["history"][-1]["top1"] <= 1


def test_prototype_head_needs_no_training(tiny_cls_data, tmp_path):
    task = make_task(tiny_cls_data, tmp_path / "r", head="prototype")
    result = fit(task, train_cfg(epochs=5), run_dir=tmp_path / "r")
    assert len(result["history"]) == 1 and "train_loss" not in result["history"][0]
    model = torch.load(tmp_path / "r" / "best.pt", weights_only=True)["model"]
    w = model["head.weight"]
    assert torch.allclose(w.norm(dim=1), torch.ones(4), atol=1e-5)  # normalised class means


def test_imprint_head_starts_at_class_means(tiny_cls_data, tmp_path):
    task = make_task(tiny_cls_data, tmp_path / "r", head="imprint", freeze_stages=4)
    train_ds, val_ds = task.build_datasets()
    model = task.build_model()
    from tasks.engine.runtime import Runtime

    step_model, _, _ = task.prepare_training(model, train_ds, val_ds, Runtime.create("cpu"))
    assert step_model is model.head and model.head.weight.requires_grad
    assert torch.allclose(model.head.weight.norm(dim=1), torch.ones(4), atol=1e-5)


def test_unfreeze_schedule(tiny_cls_data, tmp_path, caplog):
    caplog.set_level("INFO")
    task = make_task(tiny_cls_data, tmp_path / "r", freeze_stages=4, unfreeze_after=1)
    torch.manual_seed(0)
    task.build_datasets()
    before = task.build_model().backbone.conv1.weight.clone()
    torch.manual_seed(0)
    task = make_task(tiny_cls_data, tmp_path / "r", freeze_stages=4, unfreeze_after=1)
    fit(task, train_cfg(epochs=2), run_dir=tmp_path / "r")
    assert "unfreezes the whole backbone" in caplog.text
    after = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["model"]["backbone.conv1.weight"]
    assert not torch.equal(before, after)


def test_episodes_are_seeded_and_perfect_on_separable_features():
    labels = torch.arange(6).repeat_interleave(10)
    feats = torch.nn.functional.one_hot(labels, 6).float() + 0.01 * torch.randn(60, 6)
    episodes = sample_episodes(labels.tolist(), ways=3, shots=2, queries=3, episodes=20, seed=1)
    for ep in episodes:
        assert len(ep.support) == 6 and len(ep.query) == 9 and not set(ep.support) & set(ep.query)
        assert len({labels[i].item() for i in ep.support}) == 3
        assert all(labels[s].item() == labels[q].item() for s, ls in zip(ep.support, ep.support_labels)
                   for q, lq in zip(ep.query, ep.query_labels) if ls == lq)
    a = run_episodes(feats, episodes)
    assert a["accuracy"] == 1.0 and a["ci95"] == 0.0
    noisy = feats + torch.randn(60, 6)
    b1 = run_episodes(noisy, sample_episodes(labels.tolist(), 5, 1, 5, 30, seed=2))
    b2 = run_episodes(noisy, sample_episodes(labels.tolist(), 5, 1, 5, 30, seed=2))
    assert b1 == b2 and 0 < b1["ci95"]
    with pytest.raises(DataError, match="lower --ways"):
        sample_episodes(labels.tolist(), ways=7, shots=1, queries=1, episodes=1, seed=0)


def test_drop_rate_drops_pooled_features_in_training_only():
    from resnet_backbones import create_backbone
    from tasks.classification.model import ImageClassifier

    torch.manual_seed(0)
    feats = torch.randn(4, 512)  # a feature batch (the frozen-backbone cache's input)
    off = ImageClassifier(create_backbone("resnet18", weights=None, out_features=("c5",)), 3).train()
    assert torch.equal(off(feats), off(feats))  # drop_rate 0: nothing random on the step
    on = ImageClassifier(create_backbone("resnet18", weights=None, out_features=("c5",)), 3, drop_rate=0.5).train()
    assert not torch.equal(on(feats), on(feats))
    on.eval()
    assert torch.equal(on(feats), on.head(feats))
