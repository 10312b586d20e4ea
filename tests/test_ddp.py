"""``torchrun --nproc-per-node 2`` on CPU (gloo): one run folder, the weights of one process with the same
global batch, metrics over the whole validation set, exact resume after one rank was interrupted."""
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

from tasks import get_config_class, get_task_class
from tasks.config import TrainConfig, build
from tasks.engine.checkpoint import load_checkpoint
from tasks.engine.trainer import fit
from tasks.runner import evaluate
from tasks.segmentation.demo import write_demo as write_segmentation_demo

REPO = Path(__file__).resolve().parents[1]
# One process of the pair gets SIGTERM mid-epoch; the other must stop at the same step.
WORKER = textwrap.dedent("""
    import json, os, signal, sys
    from tasks import get_config_class, get_task_class
    from tasks.config import TrainConfig, build
    from tasks.engine.callbacks import Callback
    from tasks.engine.trainer import TrainingInterrupted, fit

    spec = json.loads(sys.argv[1])

    class SigtermOnRank1(Callback):
        def on_train_batch_end(self, trainer, losses):
            at = (trainer.state["epoch"], trainer.state["step_in_epoch"])
            if trainer.env.rank == 1 and list(at) == spec["stop_at"]:
                os.kill(os.getpid(), signal.SIGTERM)

    task = get_task_class(spec["task"])(build(get_config_class(spec["task"]), spec["task_config"]))
    try:
        fit(task, TrainConfig(**spec["train_config"]), [SigtermOnRank1()], run_dir=spec["run_dir"])
    except TrainingInterrupted:
        sys.exit(3)
""")


def torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """torchrun in its own process group, so that a hang kills its workers too (killing torchrun alone
    leaves them running, and blocked in a collective they would hold the CPU for the rest of the suite)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout:.0f} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def seg_data8(tmp_path_factory) -> Path:
    return write_segmentation_demo(tmp_path_factory.mktemp("seg") / "data", seed=1, n_train=8, n_val=4, size=32)


def is_parameter(key: str) -> bool:
    # DDP broadcasts rank 0's buffers at every forward, so BatchNorm running statistics follow rank 0's
    # batches only; one process accumulating sees all of them.
    return not key.endswith(("running_mean", "running_var", "num_batches_tracked"))


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_two_cpu_processes_match_one_and_resume_after_one_rank_is_interrupted(task, tiny_cls_data, seg_data8,
                                                                                tmp_path):
    if task == "classification":  # frozen_bn: no BatchNorm trains, so every tensor must match
        data, task_config, batch = tiny_cls_data, {"data": [str(tiny_cls_data)], "norm": "frozen_bn"}, 4
    else:  # BatchNorm trains: per process as per accumulated batch (contiguous blocks of each step)
        data, task_config, batch = seg_data8, {"data": str(seg_data8)}, 2
    task_config.update(weights=None, img_size=32)
    train_config = {"epochs": 2, "batch_size": batch, "workers": 0, "lr": 1e-3, "logger": "csv"}
    # the same global batch in one process: the two processes' batches, accumulated
    cfg_cls, task_cls = get_config_class(task), get_task_class(task)
    single = fit(task_cls(build(cfg_cls, task_config)), TrainConfig(**train_config, accumulate=2),
                 run_dir=tmp_path / "single")

    run = tmp_path / "ddp" / "run"
    spec = {"task": task, "task_config": task_config, "train_config": train_config, "run_dir": str(run),
            "stop_at": [1, 1]}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    first = torchrun(str(script), json.dumps(spec))
    assert first.returncode != 0, first.stdout + first.stderr
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["run"]  # one folder, rank 0's
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["state"]["epoch"], ckpt["state"]["step_in_epoch"]) == (1, 1), first.stdout + first.stderr
    assert ckpt["world"] == 2 and len(ckpt["rng_ranks"]) == 2

    resumed = torchrun("-m", "tasks", "finetune", "--resume", str(run))  # the CLI, under torchrun
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("done: best") == 1  # rank 0 speaks for the run

    a, b = load_checkpoint(tmp_path / "single" / "last.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    keys = [k for k in a if a[k].is_floating_point() and (task == "classification" or is_parameter(k))]
    worst = max((a[k] - b[k]).abs().max().item() for k in keys)
    assert worst < 1e-5, f"largest difference {worst:.2e}"

    # metrics over the whole validation set: the run's last record is what one process measures on it
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    key = task_cls.primary_metric
    alone = evaluate(str(run / "last.pt"), str(data), device="cpu")
    assert history[-1][key] == pytest.approx(alone[key], abs=1e-6)
    if task == "classification":
        assert [r[key] for r in history] == pytest.approx([r[key] for r in single["history"]], abs=1e-6)
