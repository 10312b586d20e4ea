"""Omniglot few-shot, ours vs the plain reference loop, side by side in one invocation.

Both pretrain ResNet-18 from random weights on ``images_background_small1`` and score 20-way
1-shot *within-alphabet* episodes (Lake et al. 2015) on the alphabets of ``images_background_small2``
that small1 lacks. The reference is ``../shared/reference/omniglot_plain_loop.py`` run as shipped
(only its training seed is set per repeat); ours is the user's path through the CLI:

    resnet-tasks finetune --config omniglot_pretrain --data SMALL1 --seed S --out RUN
    resnet-tasks fewshot-eval --checkpoint RUN --data SMALL2 --protocol within-alphabet --ways 20 --shots 1 --queries 1

CPU time is user+sys of every process each side starts (imports, data loading, evaluation
included), read from ``RUSAGE_CHILDREN``; run it on an otherwise idle machine.

    python benchmarks/bench_fewshot.py                    # seeds 0 1 2, 400 episodes
    python benchmarks/bench_fewshot.py --seeds 0 --only ours
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference" / "omniglot_plain_loop.py"
ERROR = re.compile(r"error ([\d.]+)% ± ([\d.]+)")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """(stdout, CPU seconds, wall seconds) of a finished subprocess; stops the benchmark if it fails."""
    c0, t0 = children_cpu(), time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    cpu, wall = children_cpu() - c0, time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout + p.stderr, cpu, wall


def reference(seed: int, episodes: int, data: Path) -> dict:
    # The loop seeds torch/numpy/random with 0 in one statement; only that statement changes.
    src = REFERENCE.read_text()
    fixed = "torch.manual_seed(0), np.random.seed(0), random.seed(0)"
    if fixed not in src:
        sys.exit(f"{REFERENCE} changed: cannot find its seed statement")
    src = src.replace(fixed, f"torch.manual_seed({seed}), np.random.seed({seed}), random.seed({seed})")
    code = f"__file__ = {str(REFERENCE)!r}\nexec(compile({src!r}, __file__, 'exec'))"
    out, cpu, wall = run([sys.executable, "-c", code], {"EPISODES": str(episodes), "OMNIGLOT": str(data)})
    err, ci = map(float, ERROR.search(out).groups())
    return {"error": err, "ci95": ci, "cpu_s": cpu, "wall_s": wall}


def ours(seed: int, episodes: int, data: Path, workdir: Path, extra: list[str], eval_extra: list[str]) -> dict:
    cli = [sys.executable, "-m", "cli"]
    run_dir = workdir / f"ours-seed{seed}"
    out1, cpu1, wall1 = run(cli + ["finetune", "--config", "omniglot_pretrain", "--data",
                                   str(data / "images_background_small1"), "--seed", str(seed), "--out",
                                   str(run_dir), "--overwrite", *extra])
    out2, cpu2, wall2 = run(cli + ["fewshot-eval", "--checkpoint", str(run_dir), "--data",
                                   str(data / "images_background_small2"), "--protocol", "within-alphabet",
                                   "--ways", "20", "--shots", "1", "--queries", "1", "--episodes", str(episodes),
                                   "--seed", "0", *eval_extra])
    m = re.search(r"accuracy ([\d.]+)% ± ([\d.]+)%", out2)
    if m is None:
        sys.exit(f"could not read fewshot-eval's result:\n{out2[-2000:]}")
    acc, ci = map(float, m.groups())
    return {"error": 100 - acc, "ci95": ci, "cpu_s": cpu1 + cpu2, "wall_s": wall1 + wall2,
            "train_cpu_s": cpu1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=400)
    p.add_argument("--data", type=Path, default=SHARED / "data" / "omniglot")
    p.add_argument("--only", choices=["ours", "reference"], default=None)
    p.add_argument("--ours-args", default="", help="Extra finetune flags for ours (quoted).")
    p.add_argument("--eval-args", default="", help="Extra fewshot-eval flags for ours (quoted).")
    p.add_argument("--keep", type=Path, default=None, help="Keep our run folders here (default: a temporary folder).")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_backbone import machine  # noqa: E402  (same folder)
    import torch

    print(f"# {machine(torch.device('cpu'))}")
    print(f"# 20-way 1-shot within-alphabet, {args.episodes} episodes; error % ± 95 % CI; CPU = user+sys s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        for seed in args.seeds:
            row = {"seed": seed}
            if args.only != "ours":
                row["ref"] = reference(seed, args.episodes, args.data)
            if args.only != "reference":
                row["ours"] = ours(seed, args.episodes, args.data, workdir, args.ours_args.split(),
                                   args.eval_args.split())
            rows.append(row)
            print(" | ".join([f"seed {seed}"] + [
                f"{k}: {r['error']:.1f}% ± {r['ci95']:.1f}, {r['cpu_s']:.0f} CPU-s ({r['wall_s']:.0f} s wall)"
                for k, r in row.items() if k != "seed"]), flush=True)
    if args.only is None:
        for r in rows:
            print(f"seed {r['seed']}: ours/ref errors {r['ours']['error'] / r['ref']['error']:.2f}, "
                  f"CPU {r['ours']['cpu_s'] / r['ref']['cpu_s']:.2f}")
        mean = {k: sum(r[k]["error"] for r in rows) / len(rows) for k in ("ref", "ours")}
        cpu = {k: sum(r[k]["cpu_s"] for r in rows) / len(rows) for k in ("ref", "ours")}
        print(f"mean over {len(rows)} seed(s): reference {mean['ref']:.1f}% in {cpu['ref']:.0f} CPU-s, ours "
              f"{mean['ours']:.1f}% in {cpu['ours']:.0f} CPU-s: {100 * (1 - mean['ours'] / mean['ref']):.0f}% "
              f"fewer errors, CPU ratio {cpu['ours'] / cpu['ref']:.2f}")


if __name__ == "__main__":
    main()
