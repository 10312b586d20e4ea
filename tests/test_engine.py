"""The shared loop: run folder contents, atomic checkpoints, exact resume, interruption."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks.classification.config import ClassificationConfig
from tasks.classification.task import ClassificationTask
from tasks.config import ConfigError, TaskConfig, TrainConfig, split_values
from tasks.engine.checkpoint import load_checkpoint, save_checkpoint
from tasks.engine.optim import build_scheduler
from tasks.engine.trainer import TrainingInterrupted, fit


def run(data, run_dir: Path, resume=None, interrupt_at: tuple[int, int] | None = None, epochs: int = 2):
    """Train the tiny task; ``interrupt_at=(epoch, step)`` raises Ctrl-C before that step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    task = ClassificationTask(ClassificationConfig(data=str(data), weights=None, img_size=32), seed=0,
                              run_dir=run_dir)
    if interrupt_at is not None:
        steps = {"n": 0, "epoch": 0}
        original = task.training_step

        def step(model, batch):
            if (steps["epoch"], steps["n"]) == interrupt_at:
                raise KeyboardInterrupt
            steps["n"] += 1
            return original(model, batch)

        def on_epoch_start(model, epoch):
            steps.update(epoch=epoch, n=0)

        task.training_step, task.on_epoch_start = step, on_epoch_start
    cfg = TrainConfig(epochs=epochs, batch_size=8, workers=0, lr=1e-3)
    torch.manual_seed(0)
    return fit(task, cfg, run_dir, resume=resume)


def test_run_folder_contents(tiny_cls_data, tmp_path):
    result = run(tiny_cls_data, tmp_path / "r")
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "metrics.csv", "curves.png", "best.pt", "last.pt", "visuals"} <= files
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"train_loss", "val_loss", "top1", "mean_class_acc"} <= set(lines[0])
    assert (tmp_path / "r" / "visuals" / "confusion_matrix.png").stat().st_size > 0
    assert result["best_metric"] == max(r["top1"] for r in lines)
    assert not list((tmp_path / "r").glob(".*.tmp"))


@pytest.mark.parametrize("interrupt_at", [(1, 0), (1, 2)], ids=["epoch-boundary", "mid-epoch"])
def test_resume_equals_uninterrupted(tiny_cls_data, tmp_path, interrupt_at):
    straight = run(tiny_cls_data, tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        run(tiny_cls_data, tmp_path / "b", interrupt_at=interrupt_at)
    ckpt = load_checkpoint(tmp_path / "b")
    assert (ckpt["state"]["epoch"], ckpt["state"]["step_in_epoch"]) == interrupt_at
    resumed = run(tiny_cls_data, tmp_path / "b", resume=tmp_path / "b")
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight["history"][-1]["top1"] == resumed["history"][-1]["top1"]
    assert len(resumed["history"]) == 2


def test_interrupt_before_first_step_leaves_usable_checkpoint(tiny_cls_data, tmp_path):
    with pytest.raises(TrainingInterrupted, match="--resume"):
        run(tiny_cls_data, tmp_path / "r", interrupt_at=(0, 0))
    ckpt = load_checkpoint(tmp_path / "r")
    assert ckpt["state"]["global_step"] == 0 and "model" in ckpt


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"x": torch.ones(2)})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"x": torch.zeros(2)})
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="not a resnet-tasks checkpoint"):
        load_checkpoint(tmp_path / "w.pth")
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_schedule_warmup_then_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total_steps=100, warmup_steps=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01


def test_param_groups_no_decay_on_norm_and_bias():
    from tasks.engine.optim import param_groups

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    groups = param_groups(model, list(model[0].parameters()), TrainConfig(lr=1.0, backbone_lr_mult=0.1,
                                                                           weight_decay=0.5))
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == 0.1 and by_name["backbone"]["weight_decay"] == 0.5
    assert by_name["head_no_decay"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown config key.*'lrr'"):
        split_values({"lrr": 1}, TaskConfig)
    with pytest.raises(ConfigError, match="optimizer must be one of adamw, sgd"):
        split_values({"optimizer": "adam"}, TaskConfig)
    with pytest.raises(ConfigError, match="epochs must be int"):
        split_values({"epochs": "many"}, TaskConfig)
    train, task = split_values({"lr": "0.5", "freeze_stages": 3}, TaskConfig)
    assert train.lr == 0.5 and task.freeze_stages == 3


def test_sigterm_saves_a_resumable_checkpoint(tiny_cls_data, tmp_path, monkeypatch):
    import os
    import signal

    from tasks.classification.task import ClassificationTask as T

    original = T.training_step
    calls = {"n": 0}

    def step(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, batch)

    monkeypatch.setattr(T, "training_step", step)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        run(tiny_cls_data, tmp_path / "r")
    assert load_checkpoint(tmp_path / "r")["state"]["global_step"] >= 1
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored after the run
