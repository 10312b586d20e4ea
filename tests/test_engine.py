"""The shared loop: run folder, exact resume for every task, callbacks, atomic checkpoints, batching."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tasks.classification.config import ClassificationConfig
from tasks.classification.task import ClassificationTask
from tasks.config import ConfigError, TaskConfig, TrainConfig, build, split_values
from tasks.detection.config import DetectionConfig
from tasks.detection.demo import write_demo as write_detection_demo
from tasks.detection.task import DetectionTask
from tasks.engine.callbacks import Callback
from tasks.engine.checkpoint import load_checkpoint, save_checkpoint
from tasks.engine.optim import build_scheduler, warmup_steps
from tasks.engine.rundir import RunDir
from tasks.engine.trainer import TrainingInterrupted, fit
from tasks.segmentation.config import SegmentationConfig
from tasks.segmentation.demo import write_demo as write_segmentation_demo
from tasks.segmentation.task import SegmentationTask


class StopAt(Callback):
    """Interrupt a real run after step ``step`` of ``epoch`` (0-based), by a signal or by request."""

    def __init__(self, epoch: int, step: int, sig: int | None = None) -> None:
        self.at, self.sig = (epoch, step), sig

    def on_train_batch_end(self, trainer, losses):
        if (trainer.state["epoch"], trainer.state["step_in_epoch"]) == self.at:
            if self.sig is None:
                trainer.request_stop("test")
            else:
                os.kill(os.getpid(), self.sig)


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory) -> Path:
    return write_segmentation_demo(tmp_path_factory.mktemp("seg") / "data", seed=1, n_train=7, n_val=2, size=32)


@pytest.fixture(scope="module")
def det_data(tmp_path_factory) -> Path:
    return write_detection_demo(tmp_path_factory.mktemp("det") / "data", seed=1, n_train=5, n_val=2)


def cls_task(data, **kw):
    return ClassificationTask(ClassificationConfig(data=str(data), weights=None, img_size=32, **kw))


def seg_task(data, **kw):
    return SegmentationTask(SegmentationConfig(data=str(data), weights=None, img_size=32, **kw))


def det_task(data, **kw):
    cfg = build(DetectionConfig, {"data": str(data), "weights": None, "img_size": 64, "norm": "bn",
                                  "freeze_stages": 0, "anchor_sizes": "16,32,64,128,256", "fpn_channels": 16,
                                  "box_head_dim": 32, "roi_batch_size": 16, "proposals": 10, **kw})
    return DetectionTask(cfg)


def train(task, run_dir: Path, callbacks=(), resume=None, **cfg):
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 4, "workers": 0, "lr": 1e-3, **cfg})
    return fit(task, cfg, callbacks, run_dir=run_dir, resume=resume)


def metrics_only(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "time_s"} for rec in history]


def assert_identical_runs(a: Path, b: Path) -> None:
    """Every tensor (parameters and buffers) bitwise equal, and the same metrics history."""
    for name in ("last.pt", "best.pt"):
        ca, cb = load_checkpoint(a / name), load_checkpoint(b / name)
        for weights in ("model", "model_ema"):
            if ca.get(weights) is None:
                assert cb.get(weights) is None
                continue
            assert ca[weights].keys() == cb[weights].keys()
            different = [k for k in ca[weights] if not torch.equal(ca[weights][k], cb[weights][k])]
            assert not different, f"{name} {weights}: {len(different)} tensors differ, e.g. {different[:3]}"
        assert metrics_only(ca["state"]["history"]) == metrics_only(cb["state"]["history"])


RESUME_CASES = {
    "classification": (lambda d: cls_task(d["cls"]), {}),
    # seeded augmentation (colour, flips) must replay the same crops after the resume
    "segmentation-freeze3": (lambda d: seg_task(d["seg"], freeze_stages=3, aug_color=0.3, vflip=True),
                             {"batch_size": 2}),
    "detection": (lambda d: det_task(d["det"]), {"batch_size": 2}),
    # the EMA weights and the position inside an accumulated step survive the resume too
    "classification-ema-accumulate": (lambda d: cls_task(d["cls"]), {"batch_size": 2, "accumulate": 2,
                                                                     "ema_decay": 0.9}),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_mid_epoch_is_bitwise_exact(case, tiny_cls_data, seg_data, det_data, tmp_path):
    make, cfg = RESUME_CASES[case]
    data = {"cls": tiny_cls_data, "seg": seg_data, "det": det_data}
    straight = train(make(data), tmp_path / "a", **cfg)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(make(data), tmp_path / "b", [StopAt(1, 1)], **cfg)
    ckpt = load_checkpoint(tmp_path / "b")
    assert (ckpt["state"]["epoch"], ckpt["state"]["step_in_epoch"]) == (1, 1)
    resumed = train(make(data), tmp_path / "b", resume=tmp_path / "b", **cfg)
    assert_identical_runs(tmp_path / "a", tmp_path / "b")
    assert metrics_only(straight["history"]) == metrics_only(resumed["history"])


def test_sigterm_stops_at_the_step_boundary_and_resumes_exactly(tiny_cls_data, tmp_path):
    train(cls_task(tiny_cls_data), tmp_path / "a")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="SIGTERM"):
        train(cls_task(tiny_cls_data), tmp_path / "b", [StopAt(0, 2, signal.SIGTERM)])
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored after the run
    ckpt = load_checkpoint(tmp_path / "b")
    # the step the signal landed in completed, exactly once: optimiser step count = steps done
    assert ckpt["state"]["global_step"] == 2
    assert all(s["step"] == 2 for s in ckpt["optimizer"]["state"].values())
    train(cls_task(tiny_cls_data), tmp_path / "b", resume=tmp_path / "b")
    assert_identical_runs(tmp_path / "a", tmp_path / "b")


def test_resume_mid_epoch_with_workers(tiny_cls_data, tmp_path):
    """After the resume, batch 3 goes to worker 0 instead of worker 1: samples are seeded per index."""
    train(cls_task(tiny_cls_data), tmp_path / "a", workers=2, epochs=1)
    with pytest.raises(TrainingInterrupted):
        train(cls_task(tiny_cls_data), tmp_path / "b", [StopAt(0, 3)], workers=2, epochs=1)
    train(cls_task(tiny_cls_data), tmp_path / "b", resume=tmp_path / "b", workers=2, epochs=1)
    assert_identical_runs(tmp_path / "a", tmp_path / "b")


def test_stop_at_the_epoch_boundary(tiny_cls_data, tmp_path):
    train(cls_task(tiny_cls_data), tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        train(cls_task(tiny_cls_data), tmp_path / "b", [StopAt(0, 6)])  # after the epoch's last step
    assert load_checkpoint(tmp_path / "b")["state"]["step_in_epoch"] == 6
    train(cls_task(tiny_cls_data), tmp_path / "b", resume=tmp_path / "b")
    assert_identical_runs(tmp_path / "a", tmp_path / "b")


def test_run_folder_contents_and_lean_checkpoints(tiny_cls_data, tmp_path):
    result = train(cls_task(tiny_cls_data), tmp_path / "r")
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "metrics.csv", "curves.png", "best.pt", "last.pt", "visuals"} <= files
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"train_loss", "val_loss", "top1", "mean_class_acc"} <= set(lines[0])
    assert (tmp_path / "r" / "visuals" / "confusion_matrix.png").stat().st_size > 0
    assert result["best_metric"] == max(r["top1"] for r in lines)
    assert not list((tmp_path / "r").glob(".*.tmp"))
    for name in ("best.pt", "last.pt"):  # a finished run: model and metadata only
        ckpt = load_checkpoint(tmp_path / "r" / name)
        assert "optimizer" not in ckpt and "rng" not in ckpt and {"model", "task_meta", "state"} <= set(ckpt)
    train(cls_task(tiny_cls_data), tmp_path / "s", save_optimizer=True)
    assert "optimizer" in load_checkpoint(tmp_path / "s" / "best.pt")
    # resuming a finished run has nothing left to do
    again = train(cls_task(tiny_cls_data), tmp_path / "r", resume=tmp_path / "r")
    assert again["history"] == result["history"]


def test_unfinished_last_pt_holds_every_rng(tiny_cls_data, tmp_path):
    with pytest.raises(TrainingInterrupted):
        train(cls_task(tiny_cls_data), tmp_path / "r", [StopAt(0, 1)])
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    assert {"optimizer", "scheduler", "loader_seed"} <= set(ckpt)
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}


class Recorder(Callback):
    """Records the hooks called on it, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)


def test_user_callbacks_see_every_hook_in_order(tiny_cls_data, tmp_path):
    rec = Recorder()
    train(cls_task(tiny_cls_data), tmp_path / "r", [rec], epochs=1)
    assert rec.calls == ["on_fit_start", "on_train_epoch_start", *["on_train_batch_end"] * 6,
                         "on_validation_end", "on_epoch_end", "on_fit_end"]


@pytest.mark.parametrize("case", ["classification", "segmentation", "detection"])
def test_a_last_batch_of_one_trains(case, tmp_path, seg_data, det_data):
    """k·batch + 1 samples at sizes where the deepest map is 1x1: BatchNorm would refuse a batch of one."""
    from tasks.classification.demo import make_classification_demo

    if case == "classification":  # 4 classes × 4 = 16 train images = 3·5 + 1
        task, batch = cls_task(make_classification_demo(tmp_path / "d", size=32, n_train=4, n_val=1)), 5
    elif case == "segmentation":  # 7 = 2·3 + 1
        task, batch = seg_task(seg_data), 3
    else:  # 5 × 0.8 after the seeded hold-out… the demo has its own val split: 5 = 2·2 + 1
        task, batch = det_task(det_data, img_size=32), 2
    result = train(task, tmp_path / "r", batch_size=batch, epochs=1)
    assert len(result["history"]) == 1


class RandomSamples(torch.utils.data.Dataset):
    """Each sample draws from the worker's global RNGs (as many user datasets do)."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> float:
        import random

        import numpy as np

        return torch.rand(1).item() + float(np.random.rand()) + random.random()


def test_worker_randomness_follows_the_sample_not_the_worker():
    from tasks.engine.batching import EpochBatchSampler, SeededSamples, make_loader

    def values(workers: int, skip: int) -> list[float]:
        batches = EpochBatchSampler(6, 2, seed=0)
        batches.set_epoch(0, skip)
        loader = make_loader(SeededSamples(RandomSamples(), seed=0), 2, workers, False, None, batches)
        return [v for batch in loader for v in batch.tolist()]

    full = values(2, skip=0)
    assert values(2, skip=1) == full[2:]  # resumed: each batch lands on another worker
    assert values(1, skip=0) == full


def test_warmup_is_capped_to_a_fifth_of_the_run():
    assert warmup_steps(1.0, steps_per_epoch=10, total_steps=100) == 10
    assert warmup_steps(1.0, steps_per_epoch=10, total_steps=10) == 2  # a 1-epoch run is not all warmup
    assert warmup_steps(0.0, steps_per_epoch=10, total_steps=10) == 0


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



@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimiser_is_fused_and_steps_as_torch_default(optimizer):
    """The fused kernel (5x faster on CPU than torch's per-parameter loop) gives the loop's parameters.
    (No conv bias before the norm, as in a ResNet: its gradient is rounding noise, which Adam divides by
    its own square root, so any two implementations disagree there.)"""
    import inspect

    from tasks.engine.optim import build_optimizer, param_groups

    def model_and_opt(fused: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                    torch.nn.LazyLinear(2))
        model(torch.zeros(1, 3, 8, 8))
        cfg = TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=0.01)
        opt = build_optimizer(param_groups(model, list(model[0].parameters()), cfg), cfg)
        if not fused:  # the same optimiser and settings, with torch's default implementation
            accepted = inspect.signature(type(opt)).parameters
            opt = type(opt)([{k: v for k, v in g.items() if k != "fused"} for g in opt.param_groups],
                            **{k: v for k, v in opt.defaults.items() if k in accepted and k != "fused"})
        return model, opt

    runs = []
    for fused in (True, False):
        model, opt = model_and_opt(fused)
        assert opt.defaults.get("fused") == (fused or None)
        for step in range(3):
            opt.zero_grad()
            model(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(step))).square().mean().backward()
            opt.step()
        runs.append(model.state_dict())
    assert all(torch.allclose(runs[0][k], runs[1][k], rtol=1e-5, atol=1e-6) for k in runs[0])
    assert not runs[0]["0.weight"].equal(model_and_opt(True)[0].state_dict()["0.weight"])  # it did step


# ---- checkpoints and the run folder -------------------------------------------------------------------
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


KILLED_DURING_SAVE = textwrap.dedent("""
    import os, sys, time, torch
    from tasks.engine.checkpoint import save_checkpoint
    path = sys.argv[1]
    save_checkpoint(path, {"x": torch.ones(2)})
    def stall(fd):  # the new file is written; the rename over last.pt has not happened yet
        print("saving", flush=True)
        time.sleep(60)
    os.fsync = stall
    save_checkpoint(path, {"x": torch.zeros(1000)})
""")


def test_sigkill_during_save_leaves_the_previous_checkpoint_and_the_next_run_tidies(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_DURING_SAVE, str(run / "last.pt")],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    assert proc.stdout.readline().strip() == "saving"
    proc.kill()
    proc.wait()
    assert torch.equal(torch.load(run / "last.pt", weights_only=True)["x"], torch.ones(2))
    assert len(list(run.glob(".*.tmp"))) == 1
    with RunDir(run, resume=True).claim():
        pass
    assert not list(run.glob(".*.tmp"))


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="not a resnet-tasks checkpoint"):
        load_checkpoint(tmp_path / "w.pth")
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_taken_run_folder_is_refused_unless_resume_or_overwrite(tiny_cls_data, tmp_path):
    train(cls_task(tiny_cls_data), tmp_path / "r", epochs=1)
    first = load_checkpoint(tmp_path / "r" / "best.pt")["model"]
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        train(cls_task(tiny_cls_data), tmp_path / "r", epochs=1, seed=1)
    assert all(torch.equal(first[k], v) for k, v in load_checkpoint(tmp_path / "r" / "best.pt")["model"].items())
    cfg = TrainConfig(epochs=1, batch_size=4, workers=0, seed=1)
    fit(cls_task(tiny_cls_data), cfg, run_dir=tmp_path / "r", overwrite=True)
    assert load_checkpoint(tmp_path / "r" / "best.pt")["train_config"]["seed"] == 1


def test_a_run_folder_is_locked_while_a_run_writes_to_it(tmp_path):
    with RunDir(tmp_path / "r").claim():
        with pytest.raises(ValueError, match="in use by another run"):
            with RunDir(tmp_path / "r").claim():
                pass
    assert (tmp_path / "r").is_dir()  # the refused second claim removed nothing


def test_a_run_that_fails_before_starting_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        train(cls_task(tmp_path / "missing"), tmp_path / "runs" / "r")
    assert not (tmp_path / "runs").exists()


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown config key.*'lrr'"):
        split_values({"lrr": 1}, TaskConfig)
    with pytest.raises(ConfigError, match="optimizer must be one of adamw, sgd"):
        split_values({"optimizer": "adam"}, TaskConfig)
    with pytest.raises(ConfigError, match="epochs must be int"):
        split_values({"epochs": "many"}, TaskConfig)
    train_cfg, task_cfg = split_values({"lr": "0.5", "freeze_stages": 3}, TaskConfig)
    assert train_cfg.lr == 0.5 and task_cfg.freeze_stages == 3


@pytest.mark.parametrize("values, message", [
    ({"lr": -1}, "lr must be > 0"), ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"epochs": 0}, "epochs must be >= 1"), ({"workers": -1}, "workers must be >= 0"),
    ({"img_size": 0}, "img_size must be >= 16"), ({"freeze_stages": 5}, "freeze_stages must be in 0…4"),
])
def test_ranges_are_declared_once_and_hold_for_dicts_and_python(values, message):
    with pytest.raises(ConfigError, match=message):
        split_values(values, TaskConfig)  # what the CLI and YAML go through
    cls = TrainConfig if set(values) <= {f for f in TrainConfig.__dataclass_fields__} else TaskConfig
    with pytest.raises(ConfigError, match=message):
        cls(**values)  # Python users


def test_weights_none_is_one_spelling():
    assert TaskConfig(weights="none").weights is None and TaskConfig(weights="None").weights is None


def test_a_non_finite_loss_stops_the_run_before_the_optimiser_step(tiny_cls_data, tmp_path, monkeypatch):
    from resnet_backbones.errors import UserError

    task = cls_task(tiny_cls_data)
    real_step, seen = task.training_step, {}

    def poisoned(model, batch):
        seen["model"] = model
        seen.setdefault("before", {k: p.detach().clone() for k, p in model.named_parameters()})
        return {"loss": real_step(model, batch)["loss"] * float("nan")}

    monkeypatch.setattr(task, "training_step", poisoned)
    with pytest.raises(UserError, match=r"loss became nan at epoch 1, step 1; lower --lr"):
        train(task, tmp_path / "run")
    after = dict(seen["model"].named_parameters())
    assert all(torch.equal(after[k], v) for k, v in seen["before"].items())  # no step with NaN gradients
