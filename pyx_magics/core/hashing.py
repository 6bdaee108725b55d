"""Streamed sha256, canonical JSON and atomic writes."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import json.encoder
import math
import os
from pathlib import Path
from typing import Any

from pyx_magics.core.libc import libc

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


def _not_json(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# one C encoder built once (json.dumps builds one per call; indent= is pure Python); None without _json
_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode: Any = None if _make_encoder is None else _make_encoder(
    None, _not_json, json.encoder.encode_basestring, None, ": ", ", ", True, False, False)


def layout_json(obj: Any) -> bytes:
    """Deterministic JSON for the files pyx writes at every run (manifests, task inputs): one line per
    key of the first two levels, each value below that on one line. Twice as fast as ``pretty_json``."""
    if _c_encode is None or type(obj) is not dict:
        return pretty_json(obj)
    try:
        return _layout(obj)
    except (ValueError, TypeError, RecursionError):  # NaN/Infinity, non-string keys: make it JSON first
        return _layout(json.loads(_dumps(obj)))


def _layout(obj: dict[str, Any]) -> bytes:
    key, encode = json.encoder.encode_basestring, _c_encode
    parts = []
    for k in sorted(obj):
        v = obj[k]
        if type(v) is dict and v:
            inner = ",\n".join(f"    {key(k2)}: {''.join(encode(v[k2], 0))}" for k2 in sorted(v))
            parts.append(f"  {key(k)}: {{\n{inner}\n  }}")
        else:
            parts.append(f"  {key(k)}: {''.join(encode(v, 0))}")
    return ("{\n" + ",\n".join(parts) + "\n}\n").encode("utf-8") if parts else b"{}\n"


def sha256_json(obj: Any) -> str:
    return sha256_bytes(canonical_json(obj))


_tmp_counter = itertools.count()
RENAME_EXCHANGE = 2  # renameat2(2) flag (Linux >= 3.15)
_AT_FDCWD = -100


_UNSET: Any = object()
_renameat2: Any = _UNSET  # loaded on first use: None where the kernel or libc has no renameat2


def _load_renameat2() -> Any:
    import ctypes

    fn = getattr(libc(), "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def _exchange(tmp: str, target: str) -> bool:
    """Swap ``tmp`` with an existing ``target`` atomically and remove what is now ``tmp``; False when the
    kernel or filesystem cannot, or ``target`` does not exist (the caller renames instead).

    Why not ``os.replace``: ext4 (``auto_da_alloc``) flushes the new file's data when a rename replaces
    an existing file, ~0.3 ms for a small manifest here; an exchange followed by an unlink does not.
    The result is ``os.replace``'s: a link or special file at ``target`` is replaced, not followed, and
    a folder is refused (swapped back, ``IsADirectoryError``).
    """
    global _renameat2
    if _renameat2 is _UNSET:
        _renameat2 = _load_renameat2()
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(target), RENAME_EXCHANGE) != 0:
        import ctypes

        if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
            _renameat2 = None  # this kernel or filesystem cannot exchange: stop trying
        return False
    try:
        os.unlink(tmp)  # tmp now holds the old content
    except IsADirectoryError:  # target was a folder: put it back
        _renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(target), RENAME_EXCHANGE)
        raise
    return True


def _read_umask() -> int | None:
    """The process umask without changing it (``os.umask`` can only set it), or None if unknown."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, durable: bool = False,
                 exists: bool | None = None) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename.

    A reader sees the old file or the new one, never half of one; on failure the
    temp file is removed and the old file is untouched. ``durable`` adds an fsync
    (survives power loss, not only a killed process; costs ~0.5 ms here). ``exists``,
    when the caller knows, saves a system call: False for a name that is surely new.
    """
    target = os.fspath(path)
    folder, name = os.path.split(target)
    exact = _UMASK is not None and mode & _UMASK == 0  # the umask keeps ``mode`` as it is: no fchmod
    while True:
        tmp = os.path.join(folder, f".{name}.{os.getpid()}-{next(_tmp_counter)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                         mode if exact else 0o600)
            break
        except FileExistsError:  # left by a crashed process that had the same pid
            continue
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if not exact:
                os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if exists is False or not _exchange(tmp, target):
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
        size = os.stat(path).st_size
    except FileNotFoundError:
        atomic_write(path, data, exists=False)
        return
    except OSError:
        size = -1
    if size == len(data):
        try:
            with open(path, "rb") as f:
                if f.read(size + 1) == data:
                    return
        except OSError:
            pass
    atomic_write(path, data)
