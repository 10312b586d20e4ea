"""The suite's table, its JSON, and the comparison of two JSON files."""
from __future__ import annotations

import json
from pathlib import Path

from .timing import Ratio


def table(ratios: list[Ratio]) -> str:
    lines = [f"{'ratio ours/reference':<40} {'median':>6} {'spread':>13} {'best':>6} {'ours s':>7} {'ref s':>7}  "
             "setting", "-" * 116]
    for r in ratios:
        lines.append(f"{r.key:<40} {r.median:6.3f} {r.low:6.3f}–{r.high:<6.3f} {r.best:6.3f} {r.ours_s:7.4f} "
                     f"{r.ref_s:7.4f}  {r.note}")
    return "\n".join(lines)


def memory_table(memory: dict) -> str:
    lines = [f"{'peak memory of training steps':<30} {'freeze':>6} {'trainable':>12} {'step MiB':>9} "
             f"{'x freeze 0':>10} {'peak MiB':>9}"]
    for task, rows in memory.items():
        base = rows["0"]["step_mib"]
        for freeze, r in rows.items():
            lines.append(f"{task:<30} {freeze:>6} {r['trainable']:>12,} {r['step_mib']:>9.0f} "
                         f"{r['step_mib'] / base if base else float('nan'):>10.2f} {r['peak_mib']:>9.0f}")
    return "\n".join(lines)


def write_json(path: Path, ratios: list[Ratio], memory: dict, extra: dict, meta: dict) -> None:
    doc = {**meta, "ratios": {r.key: r.as_json() for r in ratios}, "memory": memory, "figures": extra}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def compare(old_path: Path, ratios: list[Ratio]) -> str:
    """Old vs new median of every ratio both runs have; a change beyond either run's spread is flagged."""
    old = json.loads(Path(old_path).read_text())["ratios"]
    lines = [f"{'ratio':<42} {'old':>7} {'new':>7} {'new/old':>8}", "-" * 70]
    for r in ratios:
        o = old.get(r.key)
        if o is None:
            lines.append(f"{r.key:<42} {'-':>7} {r.median:7.3f}")
            continue
        beyond = r.median > o["high"] and o["median"] < r.low or r.median < o["low"] and o["median"] > r.high
        lines.append(f"{r.key:<42} {o['median']:7.3f} {r.median:7.3f} {r.median / o['median']:8.3f}"
                     f"{'  beyond both spreads' if beyond else ''}")
    gone = sorted(set(old) - {r.key for r in ratios})
    if gone:
        lines.append("only in the old file: " + ", ".join(gone))
    return "\n".join(lines)
