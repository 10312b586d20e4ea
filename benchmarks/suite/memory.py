"""Peak memory of our training step per task at freeze_stages 0, 3 and 4, each in a fresh process.

CUDA: ``torch.cuda.max_memory_allocated`` over the steps. CPU: the process's peak resident set
during the steps (``VmHWM``, reset just before them through ``/proc/self/clear_refs``; the peak of
the whole process is set by imports and data scanning) minus its RSS just before the first step
(model and batch already in memory), i.e. what training adds: activations, gradients, optimiser state.
"""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from .sides import Settings, engine_step, first_batch, our_trainer, size_batch

FREEZES = (0, 3, 4)


def task_values(task: str, s: Settings) -> dict:
    """The data, image size and batch of each task's timing case."""
    size, batch = size_batch(task, s)
    data = {"classification": {"data": str(s.data / "hymenoptera_data")},
            "segmentation": {"data": str(s.data / "isbi_membrane")}}.get(task, {})  # detection: its demo set
    return {**data, "img_size": size, "batch_size": batch}


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: VmHWM (peak RSS) := current RSS


def worker(task: str, freeze: int, s: Settings) -> dict:
    """One setting in this process: MiB the training steps need."""
    tr = our_trainer(task, {**task_values(task, s), "backbone": "resnet18", "weights": None, "freeze_stages": freeze},
                     s, f"mem-{task}-{freeze}")
    batch = first_batch(tr)
    n = len(batch["image"]) if isinstance(batch, dict) else len(batch[0])
    step = engine_step(tr, batch, n)
    cuda = s.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(s.device)
        torch.cuda.reset_peak_memory_stats(s.device)
        before = torch.cuda.memory_allocated(s.device) / 2**20
    else:
        reset_peak_rss()
        before = status_mib("VmRSS")
    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize(s.device)
        peak = torch.cuda.max_memory_allocated(s.device) / 2**20
    else:
        peak = status_mib("VmHWM")
    trainable = sum(p.numel() for p in tr.step_model.parameters() if p.requires_grad)
    return {"peak_mib": round(peak, 1), "step_mib": round(peak - before, 1), "trainable": trainable}


def run(s: Settings, argv_settings: list[str], tasks: list[str]) -> dict:
    """{task: {freeze: worker result}}, each setting in a fresh ``python -m benchmarks`` process."""
    out: dict = {}
    for task in tasks:
        for freeze in FREEZES:
            cmd = [sys.executable, "-m", "benchmarks", *argv_settings, "--memory-worker", f"{task}:{freeze}"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"memory worker {task}:{freeze} failed:\n{res.stderr[-2000:]}")
            out.setdefault(task, {})[str(freeze)] = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"  memory {task} freeze {freeze}: {out[task][str(freeze)]}", flush=True)
    return out
