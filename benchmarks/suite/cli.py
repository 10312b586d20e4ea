"""``python -m benchmarks``: every side-by-side benchmark, one table of ratios ours/reference.

    python -m benchmarks --quick --json docs/benchmarks-quick.json        # ≤ 15 min on 2 CPU cores
    python -m benchmarks --quick --compare docs/benchmarks-quick.json     # this commit vs the recorded one
    python -m benchmarks --device cuda --amp --channels-last [--compile]  # the GPU path (gpu_suite.sh)

Each ratio is the median over ``--rounds`` (≥ 5) rounds, or more until the timed calls add up to
``--seconds``, in which ours and the reference each run once, in alternating order, after untimed
warm-up calls (which also absorb torch.compile); the spread is the lowest and highest round, and
"best" the ratio of the two fastest calls (least disturbed by other jobs). Train steps: ours through
the engine's real ``Trainer.train_step`` (as set up by ``finetune``) with its defaults, and with the
reference's settings; the reference is the loop a user writes from the timm / smp / torchvision docs
(``benchmarks/suite/*.py`` say which). The thread count is set once (``--threads``) and recorded.
Peak memory per task at freeze 0/3/4 comes from one fresh process per setting.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import backbone, classification, detection, memory, report, segmentation, timing
from .sides import Settings

ROOT = Path(__file__).resolve().parents[2]
CASES = {"backbone": backbone.run, "classification": classification.run, "fewshot": classification.fewshot_run,
         "segmentation": segmentation.run, "detection": detection.run}
MEMORY_TASKS = ["classification", "segmentation", "detection"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--quick", action="store_true", help="small sizes (resnet18, 112–256 px): ≤ 15 min on 2 CPU cores")
    ap.add_argument("--only", default=",".join([*CASES, "memory"]), help="comma list of: %(default)s")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on both sides")
    ap.add_argument("--channels-last", action="store_true", help="channels_last models and inputs, both sides")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models (compile time is warm-up)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads (%(default)s)")
    ap.add_argument("--rounds", type=int, default=9, help="timed rounds per ratio (≥ 5)")
    ap.add_argument("--seconds", type=float, default=25.0,
                    help="more rounds until a ratio's timed calls add up to this (≤ 10× --rounds; %(default)s)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls of each side first")
    ap.add_argument("--memory-tasks", default=",".join(MEMORY_TASKS), help="tasks of --only memory (%(default)s)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    ap.add_argument("--json", type=Path, help="write the ratios, memory and figures here")
    ap.add_argument("--compare", type=Path, help="an earlier --json file: print old vs new medians")
    ap.add_argument("--profile", action="append", default=[], metavar="KEY",
                    help="print torch.profiler tables of both sides for ratios whose key starts with KEY")
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds < 5:
        ap.error("--rounds must be 5 or more: a median of fewer alternated rounds is noise")
    if args.seconds < 0:
        ap.error(f"--seconds must be 0 or more (timed seconds per ratio), got {args.seconds}")
    unknown = set(args.only.split(",")) - {*CASES, "memory"}
    if unknown:
        ap.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join([*CASES, 'memory'])}")
    needs_data = {"classification", "fewshot", "segmentation", "memory"} & set(args.only.split(","))
    if needs_data and not args.data.is_dir():
        ap.error(f"--data {args.data}: no such folder; {', '.join(sorted(needs_data))} read the shared data "
                 "(hymenoptera_data, omniglot, isbi_membrane): pass --data DIR")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here")
    return args


def settings_argv(args: argparse.Namespace) -> list[str]:
    """The flags that make a memory worker process measure what this one would."""
    out = ["--device", args.device, "--threads", str(args.threads), "--data", str(args.data)]
    return out + [f for f, on in (("--quick", args.quick), ("--amp", args.amp),
                                  ("--channels-last", args.channels_last)) if on]


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    timing.PROFILE[:] = args.profile
    workdir = Path(tempfile.mkdtemp(prefix="rt-bench-"))
    s = Settings(torch.device(args.device), args.amp, args.channels_last, args.compile, args.rounds, args.warmup,
                 args.seconds, args.quick, args.data, workdir)
    try:
        if args.memory_worker:
            import json

            task, freeze = args.memory_worker.split(":")
            print(json.dumps(memory.worker(task, int(freeze), s)))
            return
        run(args, s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, s: Settings) -> None:
    from benchmarks.bench_backbone import machine

    only = args.only.split(",")
    meta = {"machine": machine(s.device), "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
            "threads": args.threads, "device": args.device, "amp": args.amp, "channels_last": args.channels_last,
            "compile": args.compile, "quick": args.quick, "rounds": args.rounds, "seconds": args.seconds,
            "warmup": args.warmup,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"machine: {meta['machine']}\ncommand: {meta['command']}", flush=True)
    t0 = time.perf_counter()
    ratios, extra, mem = [], {}, {}
    for name, case in CASES.items():
        if name in only:
            t = time.perf_counter()
            got = case(s, extra)
            ratios += got
            print(f"\n[{name}: {time.perf_counter() - t:.0f} s]\n{report.table(got)}", flush=True)
    if "memory" in only:
        mem = memory.run(s, settings_argv(args), args.memory_tasks.split(","))
    extra["suite_s"] = round(time.perf_counter() - t0, 1)
    print(f"\nall ratios ({extra['suite_s']:.0f} s):\n{report.table(ratios)}")
    if extra:
        print("\n" + "\n".join(f"{k}: {v}" for k, v in extra.items()))
    if mem:
        print("\n" + report.memory_table(mem))
    if args.json:
        report.write_json(args.json, ratios, mem, extra, meta)
        print(f"\nwrote {args.json}")
    if args.compare:
        print("\n" + report.compare(args.compare, ratios))
