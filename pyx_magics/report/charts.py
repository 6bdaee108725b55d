"""Per-partition charts (lag or message count) for the inspect log: PNG files, matplotlib Agg, no pyplot."""

from __future__ import annotations

import csv
import functools
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


DPI = 100
DARK, GREY, RED, BLUE = "#24292f", "#57606a", "#cf222e", "#0969da"


@functools.lru_cache(maxsize=4096)
def _glyphs(text: str, points: float, ha: str, va: str) -> Any:
    """The outline of ``text`` at ``points`` (in pixels at :data:`DPI`) from matplotlib's default font,
    moved so that its ``ha``/``va`` anchor is the origin (the control points bound it: close enough)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    path = TextPath((0, 0), text, size=points * DPI / 72, prop=FontProperties())
    (x0, y0), (x1, y1) = path.vertices.min(axis=0), path.vertices.max(axis=0)
    dx = {"left": -x0, "center": -(x0 + x1) / 2, "right": -x1}[ha]
    dy = {"bottom": -y0, "top": -y1}[va]
    return path.transformed(Affine2D().translate(dx, dy))


def _label(text: str, points: float, x: float, y: float, size: tuple[float, float], ha: str, va: str) -> Any:
    """``text`` anchored (``ha``/``va``) at figure fraction (x, y), in figure-fraction units."""
    from matplotlib.transforms import Affine2D

    w, h = size
    return _glyphs(text, points, ha, va).transformed(Affine2D().translate(x * w, y * h).scale(1 / w, 1 / h))


def bar_chart(points: list[tuple[str, float]], title: str, ylabel: str, dest: Path) -> Path:
    """Write a bar chart of ``points`` (partition, value) to ``dest`` (PNG) and return it.

    Drawn on the figure itself, every bar in one collection and every label as glyph outlines in
    another (matplotlib Agg): laying out and rasterizing one Text artist per label cost more than
    the rest of the chart, and Axes with their tick machinery more again.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection, PathCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    points = sorted(points, key=lambda p: (len(p[0]), p[0]))[:MAX_ROWS]
    n = max(len(points), 1)
    fig = Figure(figsize=(min(3 + 0.35 * n, 12), 2.4), dpi=DPI)
    FigureCanvasAgg(fig)
    size = (fig.get_figwidth() * DPI, fig.get_figheight() * DPI)
    left, right, bottom, top = 0.03, 0.98, 0.2, 0.78
    slot = (right - left) / n
    peak = max((v for _, v in points), default=0.0)
    scale = (top - bottom) / peak if peak > 0 else 0.0
    every = max(1, -(-n // 24))  # label at most ~24 partitions
    top3 = sorted((v for _, v in points), reverse=True)[:3]
    bars, colors, labels, label_colors = [], [], [], []
    for i, (label, value) in enumerate(points):
        height = max(value, 0.0) * scale
        x = left + i * slot
        bars.append(Rectangle((x + slot * 0.12, bottom), slot * 0.76, height))
        colors.append(RED if ylabel == "lag" and value > 0 else BLUE)
        if i % every == 0:
            labels.append(_label(label, 8, x + slot / 2, bottom - 0.03, size, "center", "top"))
            label_colors.append(DARK)
        if n <= 8 or (value in top3 and value > 0):
            labels.append(_label(f"{value:g}", 7, x + slot / 2, bottom + height + 0.015, size, "center", "bottom"))
            label_colors.append(DARK)
    labels.append(_label(title, 9, left, 0.96, size, "left", "top"))
    labels.append(_label(f"{ylabel} by partition (max {peak:g})", 8, right, 0.96, size, "right", "top"))
    label_colors += [DARK, GREY]
    tf = fig.transFigure
    fig.add_artist(PatchCollection(bars, transform=tf, facecolors=colors, edgecolors="none"))
    fig.add_artist(Line2D([left, right], [bottom, bottom], transform=tf, color=GREY, linewidth=0.8))
    fig.add_artist(PathCollection(labels, transform=tf, facecolors=label_colors, edgecolors="none"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    # zlib level 1: a fifth of level 6's time for a file a third larger (~10 KB)
    fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}, pil_kwargs={"compress_level": 1})
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
