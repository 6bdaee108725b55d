"""The partition bar chart: bars in proportion, every label drawn, a valid PNG."""

from __future__ import annotations

from pathlib import Path

from PIL import Image  # Pillow comes with matplotlib (the charts extra, part of the test install)

from pyx_magics.report.charts import bar_chart

RED, BLUE = (0xCF, 0x22, 0x2E), (0x09, 0x69, 0xDA)


def _columns_of(img: Image.Image, color: tuple[int, int, int]) -> dict[int, int]:
    """x -> number of pixels of exactly ``color`` in that column."""
    px = img.load()
    out: dict[int, int] = {}
    for x in range(img.width):
        n = sum(1 for y in range(img.height) if px[x, y][:3] == color)
        if n:
            out[x] = n
    return out


def test_bars_are_in_proportion_and_lag_is_red(tmp_path: Path) -> None:
    dest = bar_chart([("0", 0.0), ("1", 10.0), ("2", 20.0), ("3", 5.0)], "lag of t / g", "lag", tmp_path / "c.png")
    assert dest.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(dest).convert("RGB")
    cols = _columns_of(img, RED)
    assert cols and not _columns_of(img, BLUE)
    quarter = img.width / 4  # four partitions, one slot each
    heights = [max((n for x, n in cols.items() if i * quarter <= x < (i + 1) * quarter), default=0) for i in range(4)]
    assert heights[0] == 0 and heights[1] > 0
    assert abs(heights[2] / heights[1] - 2.0) < 0.1 and abs(heights[3] / heights[1] - 0.5) < 0.1


def test_counts_are_blue_and_every_partition_and_value_is_labelled(tmp_path: Path) -> None:
    img = Image.open(bar_chart([("0", 3.0), ("1", 6.0)], "count of x", "count", tmp_path / "c.png")).convert("RGB")
    assert _columns_of(img, BLUE) and not _columns_of(img, RED)
    px = img.load()
    dark = [(x, y) for x in range(img.width) for y in range(img.height) if sum(px[x, y]) < 200]
    assert dark, "no text drawn"
    below = [y for _, y in dark if y > img.height * 0.8]  # partition labels under the bars
    above = [y for _, y in dark if y < img.height * 0.15]  # the title line
    assert below and above
    for half in (range(0, img.width // 2), range(img.width // 2, img.width)):  # each slot has its label
        assert any(x in half and y > img.height * 0.8 for x, y in dark)
