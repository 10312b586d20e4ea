"""Backbone benchmark: extractor overhead vs bare torchvision, and what freezing saves in training.

    .venv/bin/python benchmarks/bench_backbone.py --arch resnet50 --size 224 --batch 8
    .venv/bin/python benchmarks/bench_backbone.py --arch resnet50 --size 224 --batch 32 --device cuda

1. Forward: ``create_backbone(arch)`` vs torchvision's own model run conv1…layer4 (same weights,
   same input, eval, no_grad). Warm-up, then the two are timed alternately; medians and ratio.
2. Train step (forward + CE loss on a linear head over pooled c5 + backward + SGD step) for each
   ``--freeze`` value, each in a fresh subprocess so its peak memory is its own. Peak memory is
   ``torch.cuda.max_memory_allocated`` on GPU; on CPU the process's peak resident set size
   (``ru_maxrss``), also shown minus the RSS just before the first step (model, optimiser and batch
   already allocated), which is what the step itself adds. Ratios are vs freeze_stages 0.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from resnet_backbones import create_backbone  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} intra-op threads)")
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    try:
        text += f", load average {os.getloadavg()[0]:.1f} at start"
    except OSError:
        pass
    return text


def bench_forward(args, device: torch.device) -> None:
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.get_model(args.arch, weights=None).to(device).eval()
    ours = create_backbone(args.arch, weights=None).to(device).eval()
    ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})

    def bare(x):  # torchvision's modules, called in ResNet._forward_impl's order, stopping at layer4
        x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        return tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))

    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    times = {"ours": [], "torchvision": []}
    fns = {"ours": lambda: ours(x), "torchvision": lambda: bare(x)}
    with torch.no_grad():
        same = torch.equal(ours(x)["c5"], bare(x))
        for i in range(args.warmup + args.iters):
            for name, fn in fns.items():  # alternate, so drifting machine load hits both alike
                _sync(device)
                t = time.perf_counter()
                fn()
                _sync(device)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n[1] forward, eval + no_grad, median of {args.iters} after {args.warmup} warm-up "
          f"(c5 identical to torchvision: {same})")
    print(f"    create_backbone (c2…c5 dict): {med['ours'] * 1e3:9.1f} ms")
    print(f"    torchvision conv1…layer4    : {med['torchvision'] * 1e3:9.1f} ms")
    print(f"    ratio ours / torchvision    : {med['ours'] / med['torchvision']:9.3f}")


def train_worker(args, device: torch.device) -> dict:
    """One freeze setting: median train-step time and peak memory (run in its own process)."""
    torch.manual_seed(0)
    bb = create_backbone(args.arch, weights=None, out_features=("c5",), freeze_stages=args.worker_freeze).to(device)
    head = torch.nn.Linear(bb.feature_info[-1].channels, 10).to(device)
    params = [p for p in [*bb.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    bb.train()
    head.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(head(bb(x)["c5"].mean((2, 3))), y)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
    else:
        before = _rss_mb()
    times = []
    for i in range(args.train_warmup + args.train_iters):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        if i >= args.train_warmup:
            times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"freeze": args.worker_freeze, "step_s": statistics.median(times), "peak_mb": peak,
            "before_mb": before, "trainable": sum(p.numel() for p in params)}


def bench_train(args, device: torch.device) -> None:
    rows = []
    for n in args.freeze:
        cmd = [sys.executable, __file__, "--arch", args.arch, "--size", str(args.size), "--batch", str(args.batch),
               "--device", args.device, "--train-iters", str(args.train_iters),
               "--train-warmup", str(args.train_warmup), "--worker-freeze", str(n)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    how = ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
           "peak RSS of a fresh process per setting (ru_maxrss)")
    print(f"\n[2] train step (linear head on pooled c5, CE, SGD momentum), median of {args.train_iters} "
          f"after {args.train_warmup} warm-up; peak memory = {how}")
    extra = "" if device.type == "cuda" else "  step adds (peak - RSS before 1st step)"
    print(f"    freeze  trainable params   step ms  x freeze0   peak MiB  x freeze0{extra}")
    base = rows[0]
    for r in rows:
        line = (f"    {r['freeze']:>6}  {r['trainable']:>16,}  {r['step_s'] * 1e3:8.1f}  {r['step_s'] / base['step_s']:9.2f}"
                f"  {r['peak_mb']:9.0f}  {r['peak_mb'] / base['peak_mb']:9.2f}")
        if device.type != "cuda":
            add, add0 = r["peak_mb"] - r["before_mb"], base["peak_mb"] - base["before_mb"]
            line += f"  {add:8.0f} MiB (x{add / add0:.2f})"
        print(line)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--train-warmup", type=int, default=1)
    ap.add_argument("--train-iters", type=int, default=5)
    ap.add_argument("--freeze", type=int, nargs="+", default=[0, 3, 4], help="freeze_stages settings; first is the base")
    ap.add_argument("--worker-freeze", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda given but CUDA is not available")
    if args.worker_freeze is not None:
        print(json.dumps(train_worker(args, device)))
        return
    print(f"bench_backbone: {args.arch}, {args.batch}x3x{args.size}x{args.size}, device {device}")
    print(f"machine: {machine(device)}")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    bench_forward(args, device)
    bench_train(args, device)


if __name__ == "__main__":
    main()
