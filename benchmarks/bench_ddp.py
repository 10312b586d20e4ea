"""Data-parallel scaling: training samples/s with 1 and N processes under torchrun, ours vs a plain DDP loop.

Each process count is one ``torchrun --standalone --nproc-per-node P`` launch of this file, which times,
side by side in the same processes, (a) our engine (``fit`` on the classification task, a timing
callback) and (b) the plain reference loop of PyTorch's DDP tutorial (torchvision ResNet, ImageFolder,
``DistributedSampler``, SGD). Batch per process is fixed (weak scaling, as timm/torchvision run), so the
scaling efficiency is ``samples/s(P) / (P × samples/s(1))``. The first epoch is warmup and not timed.

    python benchmarks/bench_ddp.py --procs 1,2 --device cpu           # gloo, one thread per process
    python benchmarks/bench_ddp.py --procs 1,2,4,8 --device cuda      # NCCL, one GPU per process
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def reference_loop(data: Path, size: int, batch: int, epochs: int, device: torch.device) -> float:
    """PyTorch's DDP tutorial recipe; returns training samples/s (all processes) of the epochs after the first."""
    import torch.distributed as dist
    import torchvision
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.35, 1.0)), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = datasets.ImageFolder(data / "train", tf)
    sampler = DistributedSampler(ds, seed=0)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler)
    model = torchvision.models.resnet18(num_classes=len(ds.classes)).to(device)
    model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seen, t0 = 0, 0.0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        if epoch == 1:
            _sync(device)
            dist.barrier()
            t0, seen = time.perf_counter(), 0
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
            opt.step()
            seen += len(y) * dist.get_world_size()
    _sync(device)
    return seen / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(data: Path, size: int, batch: int, epochs: int, device: str, run_dir: Path) -> float:
    """``fit`` on the classification task (random weights, everything trains); samples/s of the training
    steps of the epochs after the first, timed by a callback."""
    from tasks.classification.config import ClassificationConfig
    from tasks.classification.task import ClassificationTask
    from tasks.config import TrainConfig
    from tasks.engine.callbacks import Callback
    from tasks.engine.trainer import fit

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.seconds, self.samples = 0.0, 0

        def on_train_epoch_start(self, trainer, epoch):
            _sync(trainer.rt.device)
            self.t0 = time.perf_counter()

        def on_validation_end(self, trainer, metrics):  # the epoch's steps are done; validation not timed
            if trainer.state["epoch"] >= 1:
                self.seconds += time.perf_counter() - self.t0
                self.samples += trainer.state["samples"]

        def on_train_batch_end(self, trainer, losses):
            if trainer.state["step_in_epoch"] == trainer.steps_per_epoch:
                _sync(trainer.rt.device)

    timer = StepTimer()
    task = ClassificationTask(ClassificationConfig(data=str(data), weights=None, img_size=size, norm="bn"))
    cfg = TrainConfig(epochs=epochs, batch_size=batch, workers=0, device=device, logger="none", amp=False)
    fit(task, cfg, [timer], run_dir=run_dir)
    return timer.samples / timer.seconds


def worker(args) -> None:
    """One torchrun process: time both, rank 0 writes the figures."""
    import torch.distributed as dist

    from tasks.engine.distributed import device_spec, env_from_torchrun, init_process_group
    from tasks.engine.runtime import resolve_device

    env = env_from_torchrun()
    device = resolve_device(device_spec(args.device, env)) if env.distributed else resolve_device(args.device)
    if not env.distributed:  # one process: still a process group, so the reference loop's DDP runs alike
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29511"), RANK="0",
                          WORLD_SIZE="1")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    else:
        init_process_group(env, device)
    result = {"ours": ours(args.data, args.img_size, args.batch_size, args.epochs, str(device) if device.type ==
                           "cuda" else args.device, Path(args.out) / "run"),
              "reference": reference_loop(args.data, args.img_size, args.batch_size, args.epochs, device)}
    if env.main:
        (Path(args.out) / "result.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", default="1,2", help="Process counts to compare (comma-separated).")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data", type=Path, default=None, help="Folder per class with train/ (default: the demo set).")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="Per process.")
    p.add_argument("--epochs", type=int, default=3, help="The first is warmup, not timed.")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here; use --device cpu")
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            from tasks.classification.demo import make_classification_demo

            args.data = make_classification_demo(Path(tmp) / "data", seed=0, size=args.img_size)
        rows = []
        for procs in [int(x) for x in args.procs.split(",")]:
            out = Path(tmp) / f"p{procs}"
            out.mkdir()
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
                   __file__, "--worker", "--out", str(out), "--device", args.device, "--data", str(args.data),
                   "--img-size", str(args.img_size), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
            subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
            rows.append((procs, json.loads((out / "result.json").read_text())))
    base = rows[0][1]
    print(f"{args.device}, resnet18 {args.img_size}px, batch {args.batch_size} per process, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
    print(f"{'processes':>9} {'ours samples/s':>15} {'efficiency':>10} {'reference samples/s':>20} {'efficiency':>10} "
          f"{'ours/ref':>8}")
    for procs, r in rows:
        eff = {k: r[k] / procs / (base[k] / rows[0][0]) for k in r}
        print(f"{procs:>9} {r['ours']:>15.1f} {eff['ours']:>10.0%} {r['reference']:>20.1f} {eff['reference']:>10.0%} "
              f"{r['ours'] / r['reference']:>8.2f}")


if __name__ == "__main__":
    main()
