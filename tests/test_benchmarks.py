"""The benchmark suite's machinery (``python -m benchmarks``): ratios, their spread, JSON, comparison,
argument checks, and the GPU script's syntax and CPU dry run. The figures themselves are measured by
the suite, never asserted here."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.suite import report, timing
from benchmarks.suite.timing import Ratio

ROOT = Path(__file__).resolve().parents[1]


def test_alternate_takes_the_median_of_per_round_ratios_and_flips_the_order(monkeypatch):
    clock = itertools.count()
    monkeypatch.setitem(timing.CLOCK, "fn", lambda: float(next(clock)))
    calls = []
    # seconds per call: the warm-up call, then rounds 0, 1, 2 → ratios 3/2, 3/1, 2/2
    durations = {"ours": iter([1, 3, 3, 2]), "ref": iter([1, 2, 1, 2])}

    def side(name):
        def fn():
            calls.append(name)
            for _ in range(next(durations[name]) - 1):  # each clock reading advances the clock by 1
                next(clock)
        return fn

    r = timing.alternate("k", side("ours"), side("ref"), torch.device("cpu"), rounds=3, warmup=1)
    assert calls == ["ours", "ref", "ours", "ref", "ref", "ours", "ours", "ref"]  # warm-up, then flipped
    assert (r.key, r.rounds, r.median, r.low, r.high) == ("k", 3, 1.5, 1.0, 3.0)
    assert (r.ours_s, r.ref_s) == (3.0, 2.0)  # median seconds of each side
    assert r.best == 2.0  # fastest ours (2) / fastest reference (1)



def test_alternate_adds_rounds_until_seconds_up_to_ten_times_rounds(monkeypatch):
    clock = itertools.count()
    monkeypatch.setitem(timing.CLOCK, "fn", lambda: float(next(clock)))  # every call "takes" 1 s

    def call():
        return None

    assert timing.alternate("k", call, call, torch.device("cpu"), rounds=5, warmup=0).rounds == 5
    # 2 s per round: 7 rounds reach 14 s of timed calls
    assert timing.alternate("k", call, call, torch.device("cpu"), rounds=5, warmup=0, seconds=13).rounds == 7
    assert timing.alternate("k", call, call, torch.device("cpu"), rounds=5, warmup=0, seconds=1e6).rounds == 50

def test_alternate_ratio_from_real_calls():
    r = timing.alternate("sum", lambda: sum(range(20000)), lambda: sum(range(10000)), torch.device("cpu"),
                         rounds=5, warmup=1)
    assert r.low <= r.median <= r.high and r.ours_s > 0 and r.ref_s > 0


def ratio(key, median, low, high):
    return Ratio(key, median, low, high, 1.0, 1.0, 5, best=median)


def test_json_round_trip_and_compare_flags_changes_beyond_both_spreads(tmp_path):
    old = [ratio("a/train_step", 1.00, 0.98, 1.02), ratio("b/inference", 1.00, 0.90, 1.10), ratio("gone", 1, 1, 1)]
    path = tmp_path / "old.json"
    report.write_json(path, old, {}, {"suite_s": 1.0}, {"machine": "test"})
    doc = json.loads(path.read_text())
    assert doc["ratios"]["a/train_step"] == {"median": 1.0, "low": 0.98, "high": 1.02, "ours_s": 1.0, "ref_s": 1.0,
                                             "rounds": 5, "note": "", "best": 1.0}
    text = report.compare(path, [ratio("a/train_step", 1.20, 1.15, 1.25), ratio("b/inference", 1.05, 0.95, 1.12),
                                 ratio("new", 1, 1, 1)])
    lines = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert lines["a/train_step"].endswith("beyond both spreads") and "1.200" in lines["a/train_step"]
    assert not lines["b/inference"].endswith("beyond both spreads")  # within the old run's spread: noise
    assert lines["new"].split()[1] == "-" and "only in the old file: gone" in text


def run_suite(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("args, message", [(["--rounds", "4"], "--rounds must be 5 or more"),
                                           (["--seconds", "-1"], "--seconds must be 0 or more"),
                                           (["--only", "backbone,nope"], "--only: unknown nope"),
                                           (["--data", "/no/such/dir"], "--data /no/such/dir: no such folder")])
def test_suite_refuses_bad_arguments(args, message):
    res = run_suite(*args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_gpu_suite_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")], check=True)


@pytest.mark.slow
def test_gpu_suite_cpu_dry_run_writes_every_json(tmp_path):
    """The prepared GPU script, on CPU at tiny sizes: every step runs and leaves its JSON (about 2 min)."""
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")], cwd=ROOT, capture_output=True,
                         text=True, env=env, timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("fp32", "amp_channels_last", "compile"):
        ratios = json.loads((tmp_path / f"{name}.json").read_text())["ratios"]
        assert set(ratios) == {f"backbone/{k}/{arch}" for k in ("forward", "forward_c5")
                               for arch in ("resnet18", "resnet50")} | {"control/same_call"}
        assert all(r["low"] <= r["median"] <= r["high"] for r in ratios.values())
    mem = json.loads((tmp_path / "memory.json").read_text())["memory"]["classification"]
    assert set(mem) == {"0", "3", "4"} and mem["4"]["trainable"] < mem["3"]["trainable"] < mem["0"]["trainable"]
