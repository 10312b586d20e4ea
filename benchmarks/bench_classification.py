"""Our `finetune` vs a plain PyTorch loop written like the PyTorch transfer-learning tutorial.

Same data (ants vs bees), same initial weights, image size and epochs, in one process:
accuracy and seconds per epoch of both, side by side. Then few-shot: seconds per epoch of a
linear probe with and without the frozen-backbone feature cache.

    python benchmarks/bench_classification.py --data ../shared/data/hymenoptera_data --epochs 3 --img-size 112
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import datasets, transforms

from tasks.classification.config import ClassificationConfig
from tasks.classification.task import ClassificationTask
from tasks.config import TrainConfig
from tasks.engine.trainer import fit


def tutorial_loop(data: Path, init: Path, epochs: int, size: int, batch: int, workers: int, lr: float):
    """The tutorial's recipe: ImageFolder, RandomResizedCrop+flip, SGD(momentum 0.9), StepLR."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    tf = {"train": transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), transforms.Normalize(mean, std)]),
          "val": transforms.Compose([transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size),
                                     transforms.ToTensor(), transforms.Normalize(mean, std)])}
    sets = {s: datasets.ImageFolder(data / s, tf[s]) for s in ("train", "val")}
    loaders = {s: torch.utils.data.DataLoader(sets[s], batch_size=batch, shuffle=s == "train", num_workers=workers)
               for s in sets}
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(init, weights_only=True))
    model.fc = nn.Linear(model.fc.in_features, len(sets["train"].classes))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    out = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x, y in loaders["train"]:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in loaders["val"]:
                correct += (model(x).argmax(1) == y).sum().item()
        out.append((correct / len(sets["val"]), time.perf_counter() - t0))
    return out


def ours(data: Path, init: Path, epochs: int, size: int, batch: int, workers: int, lr: float, run_dir: Path,
         **task_kw):
    cfg = ClassificationConfig(data=str(data), weights=str(init), img_size=size, skip_bad_images=True,
                               label_smoothing=0.0, **task_kw)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = ClassificationTask(cfg, seed=0, run_dir=run_dir)
    t0 = time.perf_counter()
    hist = fit(task, TrainConfig(epochs=epochs, batch_size=batch, workers=workers, lr=lr, optimizer="sgd",
                                 backbone_lr_mult=1.0, weight_decay=0.0, warmup_epochs=0), run_dir=run_dir)["history"]
    total = time.perf_counter() - t0
    return [(h["top1"], h["time_s"]) for h in hist], total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/hymenoptera_data"))
    ap.add_argument("--weights", default=None, help="resnet18 state dict to start from (default: seeded random)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.001)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        init = Path(args.weights) if args.weights else tmp / "init.pth"
        if not args.weights:
            torch.manual_seed(0)
            torch.save(torchvision.models.resnet18().state_dict(), init)
        common = dict(epochs=args.epochs, size=args.img_size, batch=args.batch_size, workers=args.workers, lr=args.lr)
        ref = tutorial_loop(args.data, init, **common)
        mine, _ = ours(args.data, init, run_dir=tmp / "ours", **common)
        print(f"\nants vs bees, resnet18, init={'file ' + str(args.weights) if args.weights else 'seeded random'}, "
              f"img {args.img_size}, batch {args.batch_size}, {args.epochs} epochs, CPU threads {torch.get_num_threads()}")
        print(f"{'epoch':>5} {'tutorial acc':>13} {'ours acc':>9} {'tutorial s':>11} {'ours s':>7} {'time ratio':>11}")
        for e, ((ra, rt), (oa, ot)) in enumerate(zip(ref, mine), 1):
            print(f"{e:>5} {ra:>13.3f} {oa:>9.3f} {rt:>11.1f} {ot:>7.1f} {ot / rt:>10.2f}x")
        # Few-shot linear probe: the frozen backbone's features cached vs recomputed every epoch.
        probe = dict(shots=5, freeze_stages=4)
        cached, c_total = ours(args.data, init, run_dir=tmp / "cached", cache_features=True, **common, **probe)
        plain, p_total = ours(args.data, init, run_dir=tmp / "plain", cache_features=False, **common, **probe)
        c = sum(t for _, t in cached) / len(cached)
        p = sum(t for _, t in plain) / len(plain)
        print(f"\nfew-shot linear probe (5 shots/class, freeze_stages 4), {args.epochs} epochs: "
              f"s/epoch cached {c:.2f} vs uncached {p:.2f} ({p / c:.1f}x); whole run incl. building the cache "
              f"{c_total:.1f} s vs {p_total:.1f} s ({p_total / c_total:.1f}x); val top-1 {cached[-1][0]:.3f} vs {plain[-1][0]:.3f}")


if __name__ == "__main__":
    main()
