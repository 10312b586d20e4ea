"""Deployment table: eager fp32 vs ONNX Runtime, static/dynamic int8, pruned 80 %, pruned + int8.

For each backbone: fine-tune a classifier on the data through the CLI (from random weights, which
is all there is offline; skipped when the run folder exists), then run the deploy commands' own
code (export, quantize, prune) and measure every variant the same way, in one process, with the
same threads: CPU latency at batch 1 and 16 (median of 10 after 3 warm-ups, real validation
images), size on disk, validation accuracy. Prints a markdown table and writes it as JSON.

    python benchmarks/bench_deploy.py --data ../shared/data/hymenoptera_data --backbones resnet18 resnet50
    python benchmarks/bench_deploy.py --only dynamic        # eager fp32 and dynamic int8 only
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("onnx", "static", "dynamic", "pruned")


def finetune(run: Path, data: str, backbone: str, epochs: int, img_size: int) -> None:
    if (run / "best.pt").is_file():
        return
    subprocess.run([sys.executable, "-m", "cli", "finetune", "classification", "--data", data, "--backbone", backbone,
                    "--weights", "none", "--epochs", str(epochs), "--img-size", str(img_size), "--batch-size", "16",
                    "--lr", "1e-3", "--workers", "0", "--out", str(run), "-q"], check=True)


def bench_backbone(args, backbone: str) -> list[dict]:
    from tasks.deploy.adapters import adapter_for
    from tasks.deploy.export import export
    from tasks.deploy.formats import OnnxModule, quiet
    from tasks.deploy.measure import latency_ms, saved_bytes
    from tasks.deploy.prune import prune
    from tasks.deploy.quantize import quantize
    from tasks.deploy.source import load_source
    from tasks.engine.runtime import Runtime

    root = Path(args.out) / backbone
    run = root / "run"
    finetune(run, args.data, backbone, args.epochs, args.img_size)
    src = load_source(run, args.data)
    adapter = adapter_for("classification")
    val = src.loader(adapter.val_dataset(src.task, Path(args.data)), 16)
    x16 = next(iter(val))[0]
    x1 = x16[:1]
    rt = Runtime.create("cpu", None, False)
    rows = []

    def row(name: str, model, size: float, top1: float | None = None, extra: dict | None = None) -> None:
        with quiet():
            acc = top1 if top1 is not None else src.task.evaluate(model, val, rt)["top1"]
            r = {"backbone": backbone, "variant": name, "batch1_ms": latency_ms(model, x1),
                 "batch16_ms": latency_ms(model, x16), "size_mb": size / 1e6, "top1": acc, **(extra or {})}
        rows.append(r)
        print(json.dumps(r), flush=True)

    row("eager fp32", src.model, saved_bytes(src.model.state_dict()))
    if "onnx" in args.only:
        onnx = root / "model.onnx"
        export(run, "onnx", onnx, data=args.data, dynamic=False)
        row("ONNX Runtime fp32", OnnxModule(onnx, adapter, threads=args.threads), onnx.stat().st_size)

    for mode in [m for m in ("static", "dynamic") if m in args.only]:
        t = time.perf_counter()
        q = quantize(run, mode, root / f"int8-{mode}.pt2", data=args.data, calib_images=args.calib_images)
        rows.append({"backbone": backbone, "variant": f"{mode} int8 (PT2E, oneDNN)",
                     "batch1_ms": q["latency"]["batch1"]["int8_ms"], "batch16_ms": q["latency"]["batch16"]["int8_ms"],
                     "size_mb": q["size_mb"]["int8"], "top1": q["after"], "fp32_eager_same_run": q["latency"],
                     "seconds": time.perf_counter() - t})
        print(json.dumps(rows[-1]), flush=True)

    if "pruned" not in args.only:
        return rows
    pruned = root / "pruned"
    if not (pruned / "best.pt").is_file():
        p = prune(run, 0.8, pruned, finetune_epochs=args.prune_epochs, data=args.data, overwrite=True)
        (root / "prune_report.json").write_text(json.dumps(p, indent=1))
    p = json.loads((root / "prune_report.json").read_text())
    psrc = load_source(pruned, args.data)
    row(f"pruned 80 % (+{args.prune_epochs} ep fine-tune)", psrc.model, saved_bytes(psrc.model.state_dict()),
        extra={"flops_ratio": p["flops_ratio"], "top1_pruned_before_finetune": p["pruned"]["top1"]})
    q = quantize(pruned, "static", root / "pruned-int8.pt2", data=args.data, calib_images=args.calib_images)
    rows.append({"backbone": backbone, "variant": "pruned 80 % + static int8", "batch1_ms": q["latency"]["batch1"]["int8_ms"],
                 "batch16_ms": q["latency"]["batch16"]["int8_ms"], "size_mb": q["size_mb"]["int8"], "top1": q["after"]})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/hymenoptera_data")
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs from random weights")
    ap.add_argument("--prune-epochs", type=int, default=1, help="fine-tuning epochs after pruning")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/bench-deploy")
    ap.add_argument("--only", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                    help="variants to measure besides eager fp32 (pruned: also pruned + static int8)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [r for b in args.backbones for r in bench_backbone(args, b)]
    Path(args.out, "results.json").write_text(json.dumps(rows, indent=1))
    print("\n| backbone | variant | batch 1 ms | batch 16 ms | speed-up b16 vs eager | size MB | val top-1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["backbone"] == r["backbone"] and b["variant"] == "eager fp32")
        print(f"| {r['backbone']} | {r['variant']} | {r['batch1_ms']:.1f} | {r['batch16_ms']:.0f} | "
              f"{base['batch16_ms'] / r['batch16_ms']:.2f}x | {r['size_mb']:.1f} | {100 * r['top1']:.1f} |")


if __name__ == "__main__":
    main()
