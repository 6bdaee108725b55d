"""``.history.jsonl``: one line per run, appended safely by many processes at once."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyx_magics.core.hashing import canonical_json

HISTORY = ".history.jsonl"


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single O_APPEND write under an exclusive lock.

    O_APPEND makes each write land at the end; the lock keeps lines whole even
    when a write is split (large lines, network filesystems).
    """
    line = canonical_json(record) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never through a link
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """Parsed lines of a JSONL file; a torn or invalid line is skipped, never fatal."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the `with f` below
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj
