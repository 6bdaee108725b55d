"""Run and session ids: UTC, millisecond-sortable, unique across processes, filename-safe.

Format: ``20261204T013001123Z-7f3a9c`` — the UTC time to the millisecond, then a
random suffix. Ids from one process are also strictly increasing: a clock that
stalls or steps back never yields an id that sorts before the previous one.
"""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import UTC, datetime, timedelta

RUN_ID_RE = re.compile(r"\d{8}T\d{9}Z-[0-9a-f]{6}")
_lock = threading.Lock()
_last_ms = 0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_run_id() -> str:
    """A fresh run id; monotonic within the process, random-suffixed across processes."""
    global _last_ms
    with _lock:
        ms = max(_now_ms(), _last_ms + 1)
        _last_ms = ms
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(ms // 1000))}{ms % 1000:03d}Z-{os.urandom(3).hex()}"


def run_id_time(run_id: str) -> datetime:
    """The UTC time encoded in a run id (raises ValueError for something else)."""
    if not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"not a pyx run id: {run_id!r}")
    base = datetime.strptime(run_id[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return base + timedelta(milliseconds=int(run_id[15:18]))


def strip_run_ids(text: str) -> str:
    """Replace every run id in ``text`` (e.g. a file name) with ``<run_id>``."""
    return RUN_ID_RE.sub("<run_id>", text)
