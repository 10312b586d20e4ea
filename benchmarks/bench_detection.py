"""Detection benchmark: our Faster R-CNN / Mask R-CNN / RetinaNet vs torchvision's own models, and
what the C4 head costs vs FPN.

    .venv/bin/python benchmarks/bench_detection.py --arch resnet50 --size 320 --batch 2
    .venv/bin/python benchmarks/bench_detection.py --heads fpn,maskrcnn,retinanet --skip c4
    .venv/bin/python benchmarks/bench_detection.py --heads fpn,maskrcnn,retinanet --skip c4 --head-version v2
    .venv/bin/python benchmarks/bench_detection.py --arch resnet50 --size 800 --batch 4 --device cuda

1. Ours vs torchvision, per ``--heads``: ``build_detector(arch, head)`` vs torchvision's
   ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` / ``retinanet_resnet50_fpn`` (their ``_v2``
   with ``--head-version v2``)
   (``weights=None, weights_backbone=None``; Faster R-CNN on other depths: the same ``FasterRCNN``
   on ``resnet_fpn_backbone``), built with identical settings (BatchNorm, nothing frozen, same
   sizes, anchors, RPN/RoI sampling and proposal counts). Torchvision's weights are copied into
   ours first, so both compute the same detections (checked) and only the code differs. Train step (forward + losses + backward + SGD step) and inference (eval, no_grad) are
   timed alternately, so drifting machine load hits both alike; medians and ratio.
2. C4 vs FPN: our two heads at their defaults (C4: RoIAlign 14×14 on C4, stage 5 per RoI; FPN:
   7×7 per level, two FC layers), train step and inference time plus GFLOPs counted by
   ``torch.utils.flop_counter`` (exact, independent of machine load).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench_backbone import machine  # noqa: E402  (same folder)
from tasks.detection.heads import HEAD_DEFAULTS  # noqa: E402
from tasks.detection.model import MAX_SIZE_RATIO, build_detector  # noqa: E402

NUM_CLASSES = 21  # VOC-sized label space (20 + background)


def batch(args, device):
    g = torch.Generator().manual_seed(0)
    w = round(args.size * 4 / 3)
    images = [torch.rand(3, args.size, w, generator=g, device="cpu").to(device) for _ in range(args.batch)]
    targets = []
    for _ in range(args.batch):
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, args.size * 0.6])
        wh = (torch.rand(4, 2, generator=g) * 0.3 + 0.1) * torch.tensor([w, args.size])
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(4, args.size, w, dtype=torch.uint8)  # the boxes filled (Mask R-CNN's targets)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.round().long().tolist()):
            m[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes.to(device), "masks": masks.to(device),
                        "labels": torch.randint(1, NUM_CLASSES, (4,), generator=g).to(device)})
    return images, targets


def torchvision_model(args, head: str, rpn_batch: int, roi_batch: int, proposals: int):
    from torchvision.models import detection
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    sizes = dict(num_classes=NUM_CLASSES, min_size=args.size, max_size=round(args.size * MAX_SIZE_RATIO))
    v2 = "_v2" if args.head_version == "v2" else ""
    if head == "retinanet":
        return getattr(detection, f"retinanet_resnet50_fpn{v2}")(weights=None, weights_backbone=None, **sizes)
    settings = dict(sizes, rpn_batch_size_per_image=rpn_batch, box_batch_size_per_image=roi_batch,
                    rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=1000,
                    rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=proposals)
    if head == "maskrcnn":
        return getattr(detection, f"maskrcnn_resnet50_fpn{v2}")(weights=None, weights_backbone=None, **settings)
    if args.arch == "resnet50":
        return getattr(detection, f"fasterrcnn_resnet50_fpn{v2}")(weights=None, weights_backbone=None, **settings)
    return detection.FasterRCNN(resnet_fpn_backbone(backbone_name=args.arch, weights=None, trainable_layers=5),
                                **settings)


def ours_from(tv, args, head: str, rpn_batch: int, roi_batch: int, proposals: int):
    from tasks.detection.pretrained import our_keys

    ours = build_detector(args.arch, None, head, NUM_CLASSES, min_size=args.size, rpn_batch_size=rpn_batch,
                          roi_batch_size=roi_batch, proposals=proposals, head_version=args.head_version,
                          fpn_extra_from="c5" if (head, args.head_version) == ("retinanet", "v2") else "p5")
    ours.load_state_dict(our_keys(tv.state_dict()))  # same layout but our FPN wrapper's extra nesting
    return ours


def step_fns(model, images, targets, device):
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train():
        model.train()
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()

    def infer():
        model.eval()
        with torch.no_grad():
            model(images)
        sync()

    return train, infer


def timed_alternately(fns: dict, warmup: int, iters: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def gflops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=320, help="min side (max side = 4/3 of it here)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--heads", default="fpn", help="comma list among fpn, maskrcnn, retinanet (vs torchvision)")
    p.add_argument("--skip", choices=("torchvision", "c4"), action="append", default=[])
    p.add_argument("--head-version", choices=("v1", "v2"), default="v1", help="v2: torchvision's *_v2 detectors")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"# {machine(device)}")
    print(f"# {args.arch}, {args.batch} image(s) of {args.size}×{round(args.size * 4 / 3)}, "
          f"{NUM_CLASSES} classes, median of {args.iters} after {args.warmup} warm-up")
    images, targets = batch(args, device)
    fpn_d = HEAD_DEFAULTS["fpn"]

    for head in ([] if "torchvision" in args.skip else args.heads.split(",")):
        if (head != "fpn" or args.head_version == "v2") and args.arch != "resnet50":
            print(f"\n{head} {args.head_version}: torchvision builds it on resnet50 only; skipped")
            continue
        torch.manual_seed(0)
        tv = torchvision_model(args, head, 64, fpn_d["roi_batch_size"], fpn_d["proposals"]).to(device)
        ours = ours_from(tv, args, head, 64, fpn_d["roi_batch_size"], fpn_d["proposals"]).to(device)
        tv.eval(), ours.eval()
        with torch.no_grad():
            a, b = tv(images)[0], ours(images)[0]
        same = all(a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=1e-3) for k in a)
        print(f"\n{head} {args.head_version}: ours vs torchvision (same weights → same outputs, {', '.join(a)}: "
              f"{same})")
        fns = {}
        for name, model in (("ours", ours), ("torchvision", tv)):
            train, infer = step_fns(model, images, targets, device)
            fns[f"{name} train"], fns[f"{name} infer"] = train, infer
        t = timed_alternately(fns, args.warmup, args.iters)
        print(f"{'':12} {'ours (s)':>10} {'torchvision (s)':>16} {'ours/tv':>8}")
        for kind in ("train", "infer"):
            o, r = t[f"ours {kind}"], t[f"torchvision {kind}"]
            print(f"{kind + ' step':12} {o:10.3f} {r:16.3f} {o / r:8.2f}")
        del tv, ours, fns

    if "c4" not in args.skip:
        print("\nC4 vs FPN (our heads at their defaults: "
              + "; ".join(f"{h}: RoIAlign {d['roi_pool_size']}, {d['roi_batch_size']} RoIs/img in training, "
                          f"{d['proposals']} proposals at inference" for h, d in HEAD_DEFAULTS.items()) + ")")
        fns, flops = {}, {}
        for head in ("fpn", "c4"):
            torch.manual_seed(0)
            model = build_detector(args.arch, None, head, NUM_CLASSES, min_size=args.size).to(device)
            train, infer = step_fns(model, images, targets, device)
            fns[f"{head} train"], fns[f"{head} infer"] = train, infer
            model.train()
            flops[f"{head} train"] = gflops(lambda: sum(model(images, targets).values()).backward())
            model.eval()
            with torch.no_grad():
                flops[f"{head} infer"] = gflops(lambda: model(images))
        t = timed_alternately(fns, args.warmup, args.iters)
        print(f"{'':12} {'FPN (s)':>9} {'C4 (s)':>9} {'C4/FPN':>7} {'FPN GFLOP':>10} {'C4 GFLOP':>10}")
        for kind in ("train", "infer"):
            f, c = t[f"fpn {kind}"], t[f"c4 {kind}"]
            print(f"{kind + ' step':12} {f:9.3f} {c:9.3f} {c / f:7.2f} {flops[f'fpn {kind}']:10.1f} "
                  f"{flops[f'c4 {kind}']:10.1f}")


if __name__ == "__main__":
    main()
