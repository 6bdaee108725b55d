"""Per-partition charts (lag or message count) for the inspect log: PNG files, matplotlib Agg, no pyplot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

MAX_ROWS = 5000  # partitions read for a chart; a topic has far fewer
VALUE_COLUMNS = ("lag", "count", "messages", "message_count")


def offsets_partitions(data: Any) -> list[tuple[str | None, list[dict[str, Any]]]]:
    """(topic, partitions) groups of a ``kafka_offsets`` JSON: a top-level ``partitions`` list or ``topics``."""
    groups: list[tuple[str | None, list[dict[str, Any]]]] = []

    def take(obj: Any) -> None:
        if isinstance(obj, dict) and isinstance(obj.get("partitions"), list):
            parts = [p for p in obj["partitions"] if isinstance(p, dict) and "partition" in p]
            if parts:
                topic = obj.get("topic")
                groups.append((str(topic) if topic is not None else None, [_with_lag(p) for p in parts]))

    take(data)
    if isinstance(data, dict):
        for value in data.values():
            if isinstance(value, list):
                for item in value:
                    take(item)
    elif isinstance(data, list):
        for item in data:
            take(item)
    return groups


def _with_lag(p: dict[str, Any]) -> dict[str, Any]:
    if p.get("lag") is None and isinstance(p.get("log_end_offset"), int) and isinstance(p.get("current_offset"), int):
        return {**p, "lag": p["log_end_offset"] - p["current_offset"]}
    return p


def csv_partitions(path: Path) -> tuple[str, list[tuple[str, float]]] | None:
    """(value column, [(partition, value)]) of a CSV with a ``partition`` column and lag/count; else None."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            cols = {c.strip().lower(): c for c in reader.fieldnames or []}
            value_col = next((cols[c] for c in VALUE_COLUMNS if c in cols), None)
            if "partition" not in cols or value_col is None:
                return None
            totals: dict[str, float] = {}
            for i, row in enumerate(reader):
                if i >= MAX_ROWS:
                    break
                try:
                    v = float(row[value_col])
                except (TypeError, ValueError):
                    continue
                key = str(row[cols["partition"]])
                totals[key] = totals.get(key, 0.0) + v
    except OSError:
        return None
    return (value_col, list(totals.items())) if totals else None


def bar_chart(points: list[tuple[str, float]], title: str, ylabel: str, dest: Path) -> Path:
    """Write a bar chart of ``points`` (partition, value) to ``dest`` (PNG) and return it.

    Drawn on the figure itself (bars labelled with their values) rather than through an Axes:
    the tick and locator machinery costs more than the whole chart.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    points = sorted(points, key=lambda p: (len(p[0]), p[0]))[:MAX_ROWS]
    n = max(len(points), 1)
    fig = Figure(figsize=(min(3 + 0.35 * n, 12), 2.4), dpi=100)
    FigureCanvasAgg(fig)
    left, right, bottom, top = 0.03, 0.98, 0.2, 0.78
    slot = (right - left) / n
    peak = max((v for _, v in points), default=0.0)
    scale = (top - bottom) / peak if peak > 0 else 0.0
    every = max(1, -(-n // 24))  # label at most ~24 partitions
    top3 = sorted((v for _, v in points), reverse=True)[:3]
    tf = fig.transFigure
    for i, (label, value) in enumerate(points):
        height = max(value, 0.0) * scale
        x = left + i * slot
        color = "#cf222e" if ylabel == "lag" and value > 0 else "#0969da"
        fig.add_artist(Rectangle((x + slot * 0.12, bottom), slot * 0.76, height, transform=tf, color=color))
        if i % every == 0:
            fig.text(x + slot / 2, bottom - 0.03, label, ha="center", va="top", fontsize=8)
        if n <= 8 or (value in top3 and value > 0):  # each label costs about a millisecond
            fig.text(x + slot / 2, bottom + height + 0.015, f"{value:g}", ha="center", va="bottom", fontsize=7)
    fig.add_artist(Line2D([left, right], [bottom, bottom], transform=tf, color="#57606a", linewidth=0.8))
    fig.text(left, 0.96, title, fontsize=9, va="top")
    fig.text(right, 0.96, f"{ylabel} by partition (max {peak:g})", fontsize=8, va="top", ha="right", color="#57606a")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    fig.savefig(tmp, format="png", metadata={"Software": None})
    tmp.replace(dest)
    return dest


def load_json(path: Path, limit: int = 8 << 20) -> Any:
    """Parsed JSON of ``path`` if small enough, else None."""
    try:
        if path.stat().st_size > limit:
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
