"""Training like the references: accumulation, EMA, early stopping, class imbalance, logging, summary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.classification.config import ClassificationConfig
from tasks.classification.data import class_weights
from tasks.classification.task import ClassificationTask
from tasks.config import ConfigError, TrainConfig
from tasks.engine.batching import EpochBatchSampler
from tasks.engine.checkpoint import load_checkpoint
from tasks.engine.trainer import fit


def cls_task(data, **kw):
    return ClassificationTask(ClassificationConfig(data=str(data), weights=None, img_size=32, **kw))


def train(task, run_dir: Path, **cfg):
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 4, "workers": 0, "lr": 1e-3, **cfg})
    return fit(task, cfg, run_dir=run_dir)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def test_accumulate_4_of_2_equals_a_batch_of_8(tiny_cls_data, tmp_path):
    """BN-free model (frozen_bn backbone, linear head): 24 images = 3 steps either way."""
    big = train(cls_task(tiny_cls_data, norm="frozen_bn"), tmp_path / "a", batch_size=8, epochs=2)
    acc = train(cls_task(tiny_cls_data, norm="frozen_bn"), tmp_path / "b", batch_size=2, accumulate=4, epochs=2)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["state"]["global_step"] == b["state"]["global_step"] == 6
    assert max_difference(a["model"], b["model"]) < 1e-5
    for ra, rb in zip(big["history"], acc["history"]):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], abs=1e-5)
        assert ra["top1"] == rb["top1"]


def test_steps_group_batches_and_share_them_between_processes():
    """Two processes × batch 2 see the batches of one process accumulating 2: contiguous blocks of each step."""
    one = EpochBatchSampler(16, 2, seed=3, accumulate=4).steps()
    ranks = [EpochBatchSampler(16, 2, seed=3, accumulate=2, world=2, rank=r).steps() for r in (0, 1)]
    assert [len(s) for s in one] == [4, 4]
    for step, (a, b) in zip(one, zip(*ranks)):
        assert step == a + b
    # a last step too small for two samples per process joins the step before; nothing is lost or repeated
    parts = [EpochBatchSampler(19, 2, seed=0, world=2, rank=r) for r in (0, 1)]
    assert parts[0].step_sizes() == [4, 4, 4, 7]
    seen = sorted(i for p in parts for step in p.steps() for b in step for i in b)
    assert seen == list(range(19)) and all(len(b) >= 2 for p in parts for s in p.steps() for b in s)


def test_balanced_sampler_draws_every_class_equally_often():
    labels = ["a"] * 90 + ["b"] * 10
    from tasks.classification.data import balanced_sample_weights

    s = EpochBatchSampler(100, 10, seed=0, weights=balanced_sample_weights(labels))
    drawn = [labels[i] for e in range(20) for i in (s.set_epoch(e) or [i for b in s for i in b])]
    share_b = drawn.count("b") / len(drawn)
    assert 0.45 < share_b < 0.55  # 10 % of the images, half of the draws
    s.set_epoch(3)
    assert [i for b in s for i in b] == [i for b in s for i in b]  # seeded: the same epoch, the same draw


def test_class_weights_auto_and_explicit():
    assert class_weights("auto", ["a"] * 3 + ["b"], ["a", "b"]) == pytest.approx([4 / 6, 2.0])
    assert class_weights("1,0.5", ["a", "b"], ["a", "b"]) == [1.0, 0.5]
    with pytest.raises(ValueError, match="needs 2 non-negative numbers"):
        class_weights("1,2,3", ["a", "b"], ["a", "b"])


def test_balanced_sampler_and_class_weights_train(tiny_cls_data, tmp_path):
    task = cls_task(tiny_cls_data, sampler="balanced", class_weights="auto")
    result = train(task, tmp_path / "r")
    assert task.class_weights == pytest.approx([1.0] * 4)  # the demo set is balanced: auto weights are 1
    assert len(result["history"]) == 1


def test_ema_is_evaluated_picked_and_saved_as_timm_does(tiny_cls_data, tmp_path):
    from tasks.runner import restore

    result = train(cls_task(tiny_cls_data), tmp_path / "r", epochs=2, ema_decay=0.5)
    rec = result["history"][-1]
    assert {"top1", "raw/top1", "raw/val_loss"} <= set(rec)
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    assert best["model_ema"].keys() == best["model"].keys()
    assert max_difference(best["model_ema"], best["model"]) > 0  # an average, not a copy
    _, model, _, _ = restore(tmp_path / "r" / "best.pt", device="cpu")
    assert max_difference(model.state_dict(), best["model_ema"]) == 0  # inference uses the evaluated weights
    # the EMA weights are the ones evaluated: evaluating them reproduces the recorded top1
    from tasks.runner import evaluate

    best_rec = next(r for r in result["history"] if r["epoch"] == result["best_epoch"])
    assert evaluate(str(tmp_path / "r" / "best.pt"), str(tiny_cls_data), device="cpu")["top1"] == \
        pytest.approx(best_rec["top1"])


def test_early_stopping_finishes_the_run(tiny_cls_data, tmp_path):
    result = train(cls_task(tiny_cls_data), tmp_path / "r", epochs=6, patience=1, min_delta=1.0)
    assert [r["epoch"] for r in result["history"]] == [1, 2] and result["stopped_early"] == 2
    last = load_checkpoint(tmp_path / "r" / "last.pt")
    assert "optimizer" not in last  # finished: the lean form
    again = fit(cls_task(tiny_cls_data), TrainConfig(**last["train_config"]), resume=tmp_path / "r")
    assert again["history"] == result["history"]  # nothing left to do
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["stopped_early"] == 2 and summary["epochs_run"] == 2


def test_tensorboard_events_read_back(tiny_cls_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(cls_task(tiny_cls_data), tmp_path / "r", epochs=2)
    events = list((tmp_path / "r").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "r"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    top1 = [e.value for e in acc.Scalars("epoch/top1")]
    assert top1 == pytest.approx([r["top1"] for r in result["history"]])
    assert [e.step for e in acc.Scalars("step/lr")] == list(range(1, 13))  # 24 images / 4 × 2 epochs
    assert {"visuals/confusion_matrix", "visuals/predictions"} <= set(tags["images"])
    assert len(acc.Images("visuals/predictions")) == 2


@pytest.mark.parametrize("logger, present, absent", [
    ("csv", {"metrics.csv", "metrics.jsonl", "curves.png"}, {"events"}),
    ("none", {"curves.png"}, {"events", "metrics.csv", "metrics.jsonl"}),
])
def test_logger_choice(logger, present, absent, tiny_cls_data, tmp_path):
    train(cls_task(tiny_cls_data, head="prototype"), tmp_path / "r", logger=logger)
    names = {p.name.split(".out")[0] for p in (tmp_path / "r").iterdir()}
    assert present <= names and not absent & names


def test_summary_curves_and_best_visuals(tiny_cls_data, tmp_path, caplog):
    import logging

    from PIL import Image

    with caplog.at_level(logging.INFO, logger="tasks"):
        result = train(cls_task(tiny_cls_data), tmp_path / "r", epochs=2)
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["best_epoch"] == result["best_epoch"] and s["best_metrics"]["top1"] == result["best_metric"]
    assert s["files"]["best.pt"].endswith("best.pt") and s["files"]["tensorboard"].startswith("tensorboard --logdir")
    assert any("summary: best epoch" in r.getMessage() for r in caplog.records)
    best = tmp_path / "r" / "visuals" / "best"
    assert {"confusion_matrix.png", "predictions.png"} <= {p.name for p in best.iterdir()}
    assert Image.open(best / "predictions.png").size[0] >= 400  # a readable grid, not thumbnails


def test_curves_use_a_log_loss_axis_and_mark_the_best_epoch(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from tasks.engine.runlog import plot_curves

    seen = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: seen.update(axes=fig.axes))
    history = [{"epoch": e, "train_loss": 10.0 ** -e, "top1": 0.1 * e} for e in (1, 2, 3)]
    plot_curves(history, tmp_path / "c.png", best_epoch=2)
    loss_ax, metric_ax = seen["axes"]
    assert loss_ax.get_yscale() == "log" and metric_ax.get_yscale() == "linear"
    for ax in (loss_ax, metric_ax):
        assert any(list(line.get_xdata()) == [2, 2] for line in ax.get_lines())


def test_segmentation_panels_have_a_legend(tmp_path):
    from PIL import Image

    from tasks.segmentation.visuals import PALETTE, save_panels

    img = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.int64)
    mask[8:24, 8:24] = 2
    save_panels([(img, mask, mask)], tmp_path / "p.png", class_names=["background", "road", "building"])
    save_panels([(img, mask, mask)], tmp_path / "q.png")
    with_legend, without = np.asarray(Image.open(tmp_path / "p.png")), np.asarray(Image.open(tmp_path / "q.png"))
    assert with_legend.shape[0] > without.shape[0]
    strip = with_legend[without.shape[0]:].reshape(-1, 3)
    colours = {tuple(c) for c in strip}
    assert tuple(PALETTE[2]) in colours and tuple(PALETTE[0]) in colours and tuple(PALETTE[1]) not in colours


@pytest.mark.parametrize("values, message", [
    ({"accumulate": 0}, "accumulate must be >= 1"), ({"ema_decay": 1.0}, "ema_decay must be >= 0 and < 1"),
    ({"patience": 0}, "patience must be >= 1"), ({"logger": "wandb"}, "logger must be one of"),
])
def test_new_options_are_validated(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_sync_bn_converts_only_batchnorm_that_trains():
    from torchvision.ops import FrozenBatchNorm2d

    from resnet_backbones import create_backbone
    from tasks.engine.distributed import sync_batchnorm

    bb = create_backbone("resnet18", weights=None, freeze_stages=2)
    converted = sync_batchnorm(bb)
    kinds = {name: type(m).__name__ for name, m in bb.named_modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert all(k == "BatchNorm2d" for n, k in kinds.items() if n.startswith(("bn1", "layer1", "layer2")))
    assert all(k == "SyncBatchNorm" for n, k in kinds.items() if n.startswith(("layer3", "layer4")))
    assert converted == sum(k == "SyncBatchNorm" for k in kinds.values()) == 10  # 2 stages × (4 + downsample)
    frozen = create_backbone("resnet18", weights=None, norm="frozen_bn")
    assert sync_batchnorm(frozen) == 0 and any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    bb.train()
    assert not bb.layer1[0].bn1.training  # frozen stages still kept in eval mode
