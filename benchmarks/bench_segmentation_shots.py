"""Few-shot segmentation curve: ``finetune --task segmentation --shots K`` for several K and freezing.

    python benchmarks/bench_segmentation_shots.py --data ../shared/data/isbi_membrane \\
        --shots 1,2,5,all --freeze 3,0 --epochs 6 --img-size 256

Each configuration is one ``resnet-tasks finetune`` run of the bundled ``isbi`` preset in its own
process, one after the other, with one torch thread and no DataLoader workers. Every run gets the
same budget: the same epochs, and with ``--shots`` an epoch still draws as many crops as the full
training split has images. The same seeded validation split (6 of ISBI's 30 images) scores every
run; the table shows the last epoch's metrics (no selection on those 6 images), wall and CPU time
(user + sys of the run's process).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_backbone import machine  # noqa: E402  (same folder)


def child_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_one(args, shots: str, freeze: int) -> dict:
    out = Path(args.out) / f"shots{shots}_freeze{freeze}"
    cmd = ["resnet-tasks", "finetune", "--config", "isbi", "--data", args.data,
           "--weights", "none", "--epochs", str(args.epochs), "--img-size", str(args.img_size),
           "--freeze-stages", str(freeze), "--workers", "0", "--seed", str(args.seed), "--out", str(out)]
    if shots != "all":
        cmd += ["--shots", shots]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cpu0, t0 = child_cpu_s(), time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - t0, child_cpu_s() - cpu0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"shots": shots, "freeze": freeze, "miou": last["miou"], "membrane": last["iou/membrane"],
            "wall_s": wall, "cpu_s": cpu, "command": " ".join(cmd)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "isbi_membrane"))
    p.add_argument("--shots", default="1,2,5,all", help="Comma-separated K values; 'all' = no --shots.")
    p.add_argument("--freeze", default="3,0", help="Comma-separated --freeze-stages values.")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/bench_segmentation_shots")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine(torch.device('cpu'))}")
    rows = []
    for freeze in map(int, args.freeze.split(",")):
        for shots in args.shots.split(","):
            rows.append(run_one(args, shots.strip(), freeze))
            r = rows[-1]
            print(f"K={r['shots']:>3} freeze {r['freeze']}: mIoU {r['miou']:.3f}  membrane IoU {r['membrane']:.3f}  "
                  f"wall {r['wall_s']:.0f} s  CPU {r['cpu_s']:.0f} s", flush=True)
    print("\n| K (training images) | --freeze-stages | mIoU | membrane IoU | wall s | CPU s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shots']} | {r['freeze']} | {r['miou']:.3f} | {r['membrane']:.3f} | {r['wall_s']:.0f} | "
              f"{r['cpu_s']:.0f} |")
    print(f"\nfirst command: {rows[0]['command']}")


if __name__ == "__main__":
    main()
