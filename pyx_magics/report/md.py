"""Markdown building blocks for the reports: escaping, tables, code, links, bounded text."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TAG_LIKE = re.compile(r"<(?=[A-Za-z/!?])")


def clean_text(text: str) -> str:
    """Terminal output made readable: ANSI escapes removed, ``\\r`` progress rewrites collapsed."""
    text = _ANSI.sub("", text).replace("\r\n", "\n")
    if "\r" in text:
        text = "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))
    return _CONTROL.sub("", text)


def bounded_lines(text: str, head: int = 20, tail: int = 8, width: int = 300) -> tuple[list[str], int]:
    """The first ``head`` and last ``tail`` lines of ``text`` (each cut at ``width``) and how many were left out."""
    lines = text.rstrip("\n").split("\n") if text.strip() else []
    lines = [ln if len(ln) <= width else ln[:width] + " …" for ln in lines]
    if len(lines) <= head + tail + 1:
        return lines, 0
    omitted = len(lines) - head - tail
    return [*lines[:head], f"… ({omitted} lines omitted) …", *lines[-tail:]], omitted


def shorten(text: str, limit: int = 200) -> str:
    """One line of at most ``limit`` characters."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 1].rstrip() + "…"


def cell(value: Any, limit: int = 80) -> str:
    """A value made safe for a table cell: one line, pipes escaped, HTML-looking tags neutralised."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else _scalar(value)
    if len(text) > limit or not text.isprintable() or "  " in text:
        text = shorten(text, limit)
    if "\\" in text or "|" in text:
        text = text.replace("\\", "\\\\").replace("|", "\\|")
    return _TAG_LIKE.sub("&lt;", text) if "<" in text else text


def prose(text: str) -> str:
    """Free text kept as markdown, with HTML-looking tags neutralised (placeholders like ``<TABLE_1>`` stay visible)."""
    return _TAG_LIKE.sub("&lt;", text)


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return str(value)


def code(text: Any, in_table: bool = False) -> str:
    """An inline code span (enough backticks to hold the text)."""
    s = " ".join(str(text).split())
    if not s:
        return ""
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    out = f"{ticks}{pad}{s}{pad}{ticks}"
    return out.replace("|", "\\|") if in_table else out


def fence(text: str, lang: str = "") -> list[str]:
    """A fenced code block."""
    ticks = "`" * max(3, max((len(m) for m in re.findall(r"`{3,}", text)), default=0) + 1)
    return [ticks + lang, *text.rstrip("\n").split("\n"), ticks]


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A GFM table; cells must already be escaped (see :func:`cell`)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def href(target: Path, base: Path, fragment: str = "") -> str:
    """A relative URL from directory ``base`` to ``target`` (POSIX, percent-quoted)."""
    t, b = os.fspath(target), os.fspath(base).rstrip("/")
    rel = t[len(b) + 1:] if t.startswith(b + "/") else Path(os.path.relpath(t, b)).as_posix()
    return quote(rel, safe="/-_.~") + (f"#{fragment}" if fragment else "")


def link(text: str, url: str) -> str:
    label = text.replace("[", "\\[").replace("]", "\\]")
    return f"[{label}]({url})"


def slug(text: str) -> str:
    """A GitHub-style heading anchor: lower case, spaces to hyphens, other punctuation dropped."""
    s = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return s.replace(" ", "-")


def short_sha(sha: str | None) -> str:
    return (sha or "")[:12]


def size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"
