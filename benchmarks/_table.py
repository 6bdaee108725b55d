"""Shared printing for benchmark scripts: metric, pyx, baseline, ratio, target, met."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class Row:
    metric: str
    pyx: float
    baseline: float
    unit: str
    baseline_name: str
    target: str
    met: bool

    @property
    def ratio(self) -> float:
        return self.pyx / self.baseline if self.baseline else float("inf")


def check(metric: str, pyx: float, baseline: float, unit: str, baseline_name: str, target: str,
          ok: Callable[[float, float], bool]) -> Row:
    return Row(metric, pyx, baseline, unit, baseline_name, target, bool(ok(pyx, baseline)))


def print_rows(rows: list[Row]) -> None:
    head = f"{'metric':<44} {'pyx':>12} {'baseline':>12} {'ratio':>7}  {'target':<22} met  baseline"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.metric:<44} {r.pyx:>10.3f}{r.unit:<2} {r.baseline:>10.3f}{r.unit:<2} {r.ratio:>7.2f}  "
              f"{r.target:<22} {'yes' if r.met else 'NO ':<4} {r.baseline_name}")
    out = os.environ.get("PYX_BENCH_JSON")
    if out:
        with open(out, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({**asdict(r), "ratio": r.ratio}) + "\n")
