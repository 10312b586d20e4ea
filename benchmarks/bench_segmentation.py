"""Our U-Net (registry backbone as smp encoder) vs stock ``smp.Unet("resnet18"/"resnet34")``.

Both train in the same plain PyTorch loop on the same batches (same data, crop size, epochs,
optimiser, seed) and are scored by the same metric code; printed side by side with the ratio.
Optionally (``--engine``) ours also runs through the real ``fit()`` loop.

    python benchmarks/bench_segmentation.py --threads 1                    # demo set, resnet18+34
    python benchmarks/bench_segmentation.py --no-full-res-skip             # exactly smp's layout: same mIoU
    python benchmarks/bench_segmentation.py --data ../shared/data/isbi_membrane --size 256 --batch-size 4

Offline both encoders are randomly initialised (``encoder_weights=None``; ours ``weights=None``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import TrainConfig, build  # noqa: E402
from tasks.engine.runtime import Runtime  # noqa: E402
from tasks.segmentation.config import SegmentationConfig  # noqa: E402
from tasks.segmentation.model import PAD_MULTIPLE  # noqa: E402
from tasks.segmentation.task import SegmentationTask  # noqa: E402


class Padded(nn.Module):
    """Pad to a multiple of 32 and crop back: lets stock smp models see the same val images as ours."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % PAD_MULTIPLE or w % PAD_MULTIPLE:
            x = F.pad(x, (0, -w % PAD_MULTIPLE, 0, -h % PAD_MULTIPLE))
        return self.net(x)[..., :h, :w]


def freeze_smp_resnet(net: nn.Module, n: int) -> None:
    """Same convention as ours: stem + layer1…n get requires_grad=False (BN set to eval in the loop)."""
    if n == 0:
        return
    for name in ["conv1", "bn1"] + [f"layer{i}" for i in range(1, n + 1)]:
        for p in getattr(net.encoder, name).parameters():
            p.requires_grad_(False)


def set_train(model: nn.Module, frozen_bn: list[nn.Module]) -> None:
    model.train()
    for m in frozen_bn:
        m.eval()


class Run:
    """One model with its own optimiser and schedule; both runs see the same batches."""

    def __init__(self, model: nn.Module, frozen_bn: list[nn.Module], steps: int, lr: float) -> None:
        self.model, self.frozen_bn, self.step_times = model, frozen_bn, []
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, lr, total_steps=steps, pct_start=0.1)

    def step(self, batch: dict, ignore_index: int) -> None:
        t = time.perf_counter()
        loss = F.cross_entropy(self.model(batch["image"]), batch["mask"], ignore_index=ignore_index)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step_times.append(time.perf_counter() - t)


def train_and_score(runs: dict[str, Run], task: SegmentationTask, train_ds, val_loader, args) -> dict:
    """Train all runs in lockstep (step ours, step smp, next batch): a load change hits both alike."""
    for epoch in range(args.epochs):
        train_ds.set_epoch(epoch)
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, generator=g,
                            collate_fn=task.collate_fn(), num_workers=0)
        for r in runs.values():
            set_train(r.model, r.frozen_bn)
        for batch in loader:
            for r in runs.values():
                r.step(batch, task.labels.ignore_index)
    out = {}
    for name, r in runs.items():
        r.model.eval()
        metrics = task.evaluate(r.model, val_loader, Runtime.create("cpu"))
        warm = r.step_times[2:] or r.step_times  # first steps include allocator warm-up
        out[name] = {"step_s": sum(warm) / len(warm), "miou": metrics["miou"], "metrics": metrics,
                     "trainable": sum(p.numel() for p in r.model.parameters() if p.requires_grad)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="segmentation data folder (default: the demo set, written to a temp dir)")
    ap.add_argument("--size", type=int, default=64, help="training crop side")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--freeze-stages", type=int, default=0, help="same freezing for both models")
    ap.add_argument("--backbones", default="resnet18,resnet34")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full-res-skip", action=argparse.BooleanOptionalAction, default=True,
                    help="ours with the full-resolution image skip (default) or exactly smp's U-Net layout")
    ap.add_argument("--engine", action="store_true", help="also train ours through the real fit() loop")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import segmentation_models_pytorch as smp

    tmp = Path(tempfile.mkdtemp(prefix="bench_seg_"))
    rows = []
    for backbone in args.backbones.split(","):
        cfg = build(SegmentationConfig, {"data": args.data, "backbone": backbone, "weights": None,
                                         "img_size": args.size, "freeze_stages": args.freeze_stages,
                                         "full_res_skip": args.full_res_skip})
        task = SegmentationTask(cfg, seed=args.seed, run_dir=tmp)
        train_ds, val_ds = task.build_datasets()
        val_loader = DataLoader(val_ds, batch_size=args.batch_size, collate_fn=task.collate_fn())
        n = task.labels.num_classes

        steps = args.epochs * -(-len(train_ds) // args.batch_size)
        torch.manual_seed(args.seed)
        ours = task.build_model()
        torch.manual_seed(args.seed)
        stock = smp.Unet(backbone, encoder_weights=None, classes=n)
        freeze_smp_resnet(stock, args.freeze_stages)
        stock_bn = ([stock.encoder.conv1, stock.encoder.bn1] + [getattr(stock.encoder, f"layer{i}") for i in
                    range(1, args.freeze_stages + 1)]) if args.freeze_stages else []
        runs = {"ours": Run(ours, ours.encoder.backbone.frozen_modules(), steps, args.lr),
                "smp": Run(Padded(stock), stock_bn, steps, args.lr)}
        result = train_and_score(runs, task, train_ds, val_loader, args)
        r_ours, r_smp = result["ours"], result["smp"]
        row = {"backbone": backbone, "ours": r_ours, "smp": r_smp}
        if args.engine:
            from tasks.engine.trainer import fit

            tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, workers=0, device="cpu",
                             seed=args.seed)
            t = time.perf_counter()
            res = fit(SegmentationTask(cfg, seed=args.seed), tc, run_dir=tmp / f"fit_{backbone}")
            row["fit"] = {"wall_s": time.perf_counter() - t, "miou": res["history"][-1]["miou"]}
        rows.append(row)

    print(f"\ndata: {args.data or 'demo set'}  crop {args.size}  epochs {args.epochs}  batch {args.batch_size}  "
          f"lr {args.lr}  freeze {args.freeze_stages}  full-res skip {args.full_res_skip}  "
          f"threads {torch.get_num_threads()}  classes {n}")
    print(f"{'backbone':<10} {'model':<26} {'trainable':>10} {'s/step':>8} {'mIoU':>7}  per-class IoU")
    for row in rows:
        for key, label in (("ours", f"ours (rt-{row['backbone']} U-Net)"), ("smp", f"smp.Unet('{row['backbone']}')")):
            r = row[key]
            per_class = " ".join(f"{v:.3f}" for k, v in r["metrics"].items() if k.startswith("iou/"))
            print(f"{row['backbone']:<10} {label:<26} {r['trainable'] / 1e6:>9.2f}M {r['step_s']:>8.3f} "
                  f"{r['miou']:>7.3f}  {per_class}")
        o, s = row["ours"], row["smp"]
        print(f"{'':<10} {'ratio ours/smp':<26} {o['trainable'] / s['trainable']:>10.4f} "
              f"{o['step_s'] / s['step_s']:>8.2f} {o['miou'] / max(s['miou'], 1e-9):>7.2f}")
        if "fit" in row:
            print(f"{'':<10} {'ours via fit() (wall, mIoU)':<26} {'':>10} {row['fit']['wall_s']:>7.1f}s "
                  f"{row['fit']['miou']:>7.3f}")


if __name__ == "__main__":
    main()
