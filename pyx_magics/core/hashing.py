"""Streamed sha256, canonical JSON and atomic writes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

CHUNK = 1 << 20  # 1 MiB: measured fastest for hashlib here


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _jsonable(obj: Any) -> Any:
    """Make floats that JSON cannot hold explicit strings (NaN/Infinity are not JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _dumps(obj: Any, **options: Any) -> str:
    try:  # the common case has no NaN/Infinity: skip the walk that replaces them
        return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, **options)
    except (ValueError, TypeError):  # NaN/Infinity, or keys of mixed types that cannot be sorted
        return json.dumps(_jsonable(obj), sort_keys=True, ensure_ascii=False, allow_nan=False, **options)


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8, no NaN."""
    return _dumps(obj, separators=(",", ":")).encode("utf-8")


def pretty_json(obj: Any) -> bytes:
    """Human-readable, still deterministic JSON for files people open."""
    return (_dumps(obj, indent=2) + "\n").encode("utf-8")


def sha256_json(obj: Any) -> str:
    return sha256_bytes(canonical_json(obj))


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, durable: bool = False) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename.

    A reader sees the old file or the new one, never half of one; on failure the
    temp file is removed and the old file is untouched. ``durable`` adds an fsync
    (survives power loss, not only a killed process; costs ~0.5 ms here).
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_if_changed(path: Path, data: bytes) -> None:
    """Atomically (re)write ``path`` unless it already holds exactly ``data`` (file creation is slow)."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write(path, data)
