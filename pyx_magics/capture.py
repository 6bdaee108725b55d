"""What a running task touched: files (audit hook + directory scan), its log, its namespace.

The audit hook is installed once per process and does nothing unless a task is
running (``_active``); it never raises into the task.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import io
import os
import stat
import sys
import sysconfig
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyx_magics import dirwatch
from pyx_magics.core.redact import Redactor
from pyx_magics.core.runid import RUN_ID_RE

# ---------------------------------------------------------------- audit hook

_active: FileAudit | None = None
_hook_installed = False
_hook_lock = threading.Lock()


@functools.cache
def _interpreter_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            roots.add(p)
    roots.update(p for p in sys.path if p and p.endswith(("site-packages", "dist-packages")))
    here = str(Path(__file__).resolve().parent)
    roots.add(here)
    return tuple(sorted(r.rstrip("/") + "/" for r in roots if r)) + ("/proc/", "/dev/", "/sys/")


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class FileAudit:
    """Paths a task opened, split into reads and writes."""

    def __init__(self, ignore: Iterable[str] = ()) -> None:
        self.reads: set[str] = set()
        self.writes: set[str] = set()
        self.ignore = {os.path.abspath(p) for p in ignore}
        self._skip = _interpreter_roots()

    def _note(self, path: Any, write: bool) -> None:
        if isinstance(path, int):
            return
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        elif not isinstance(path, str):
            path = os.fspath(path)
        full = os.path.abspath(path)
        if full.startswith(self._skip) or full in self.ignore:
            return
        (self.writes if write else self.reads).add(full)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    audit = _active
    if audit is None:
        return
    try:
        if event == "open":
            path, mode, flags = args
            if mode is None:
                write = bool(flags & _WRITE_FLAGS)
            else:
                write = any(c in mode for c in "wax+")
            audit._note(path, write)
        elif event in ("os.rename", "os.replace"):
            audit._note(args[1], True)
        elif event == "shutil.copyfile":
            audit._note(args[0], False)
            audit._note(args[1], True)
    except Exception:  # an observer must never break the task
        pass


def start_audit(ignore: Iterable[str] = ()) -> FileAudit:
    global _active, _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_hook)
            _hook_installed = True
    audit = FileAudit(ignore)
    _active = audit
    return audit


def stop_audit() -> None:
    global _active
    _active = None


# ---------------------------------------------------------------- directory scan



PYX_OWN_SUFFIXES = (".manifest.json", ".log.txt", ".input.json", ".journal.jsonl", ".tmp", ".compare.json")
RACY_NS = 50_000_000  # a listing younger than this after its folder's last change is not reused


@dataclass
class _Listing:
    """The candidate names of one folder (see :func:`_listing`), updated incrementally."""

    mtime_ns: int = -1
    listed_at_ns: int = -1
    names: set[str] = field(default_factory=set)  # every name seen, candidate or not
    plain: set[str] = field(default_factory=set)  # candidates without a run id
    by_run: dict[str, set[str]] = field(default_factory=dict)  # candidates carrying a run id, by that id
    folders: set[str] = field(default_factory=set)
    watched: bool = False  # names kept exact by inotify events (dirwatch) since the last listing

    def _drop(self, name: str) -> None:
        self.plain.discard(name)
        self.folders.discard(name)
        found = RUN_ID_RE.search(name)
        if found is not None:
            self.by_run.get(found.group(0), set()).discard(name)

    def _add(self, folder: str, name: str) -> None:
        if name.startswith(".") or name.endswith(PYX_OWN_SUFFIXES):
            return
        # a task's code file <task>.py sits beside its <task>.input.json: pyx's own, never an output
        if name.endswith(".py") and name[:-3] + ".input.json" in self.names:
            return
        try:
            st = os.lstat(f"{folder}/{name}")
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):
            self.folders.add(name)
        elif not stat.S_ISREG(st.st_mode):
            return
        found = RUN_ID_RE.search(name)
        if found is None:
            self.plain.add(name)
        else:
            self.by_run.setdefault(found.group(0), set()).add(name)

    def update(self, folder: str, names: set[str]) -> None:
        removed, added = self.names - names, names - self.names
        self.names = names
        for name in removed:
            self._drop(name)
        for name in added:
            if name.endswith(".input.json"):
                self._drop(name[:-11] + ".py")
        for name in added:
            self._add(folder, name)

    def appeared(self, folder: str, name: str) -> None:
        if name not in self.names:
            self.names.add(name)
            if name.endswith(".input.json"):
                self._drop(name[:-11] + ".py")
            self._add(folder, name)

    def vanished(self, name: str) -> None:
        if name in self.names:
            self.names.discard(name)
            self._drop(name)


_listings: dict[str, _Listing] = {}
_listings_lock = threading.RLock()


def _on_event(folder: str, name: str | None, present: bool) -> None:
    """dirwatch's sink: keep a watched folder's names exact, or forget them (``name`` None)."""
    listing = _listings.get(folder)
    if listing is None:
        return
    if name is None:
        listing.watched, listing.mtime_ns = False, -1
    elif present:
        listing.appeared(folder, name)
    else:
        listing.vanished(name)


def _listing(folder: str) -> _Listing | None:
    """Names that could be a run's outputs, kept per folder and updated by what changed.

    Where inotify works (:mod:`pyx_magics.dirwatch`) a folder is listed once and then kept exact by
    its events. Elsewhere: ``os.listdir`` and set differences run in C and only names new since the
    last look are classified; adding, removing or renaming an entry changes a folder's mtime, so an
    unchanged mtime means unchanged names, but, like git's "racy" rule, not within ``RACY_NS`` of the
    change (timestamps are coarse).
    """
    with _listings_lock:
        watch = dirwatch.watcher(_on_event)
        listing = _listings.setdefault(folder, _Listing())
        if watch is not None:
            watch.drain()
            if listing.watched:
                return listing
            listing.watched = watch.watch(folder)  # before listing: nothing falls between the two
            if listing.watched:
                listing.mtime_ns = -1
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            listing.watched = False
            return None
        if listing.mtime_ns == mtime and listing.listed_at_ns - mtime > RACY_NS:
            return listing
        listed_at = time.time_ns()
        try:
            names = set(os.listdir(folder))
        except OSError:
            listing.watched = False
            return None
        listing.update(folder, names)
        listing.mtime_ns, listing.listed_at_ns = mtime, listed_at
        return listing


def _forget_listings_after_fork() -> None:
    global _listings_lock
    _listings_lock = threading.RLock()
    for listing in _listings.values():
        listing.watched, listing.mtime_ns = False, -1


os.register_at_fork(after_in_child=_forget_listings_after_fork)


def scan_dir(root: Path, run_id: str | None = None) -> dict[str, tuple[int, int]]:
    """{relative posix path: (mtime_ns, size)} of the files that could be outputs of run ``run_id``:
    hidden names, pyx's own files and other runs' evidence (names with another run id) left out."""
    found: dict[str, tuple[int, int]] = {}
    stack = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        listing = _listing(folder)
        if listing is None:
            continue
        names = listing.plain | (listing.by_run.get(run_id, set()) if run_id else set())
        for name in sorted(names):
            path = f"{folder}/{name}"
            if name in listing.folders:
                stack.append((path, f"{prefix}{name}/"))
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[prefix + name] = (st.st_mtime_ns, st.st_size)
            elif stat.S_ISDIR(st.st_mode):  # became a folder since the listing was cached
                stack.append((path, f"{prefix}{name}/"))
    return found


def changed_files(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    return sorted(p for p, sig in after.items() if before.get(p) != sig)


# ---------------------------------------------------------------- log tee


BATCH_CHARS = 64 * 1024  #: a burst of writes reaches the log in chunks of about this size
BATCH_DELAY = 0.02  #: ... and is held at most about this long (seconds)
BURST_WRITES = 16  #: writes within one BATCH_DELAY that go straight through before batching starts


class WriteBatch:
    """Keeps a burst of small writes together; shared by the stdout and stderr tees of one log.

    Sparse writes go straight through. In a burst (more than :data:`BURST_WRITES` writes within
    :data:`BATCH_DELAY`) writes are queued, in order across both tees, and passed on when
    :data:`BATCH_CHARS` are queued, on ``flush()``, or by a helper thread within ~2 x BATCH_DELAY:
    the log stays ~20-40 ms behind at most, and redaction and the write syscall run once per
    chunk instead of once per ``print`` (200 MB of ``print`` lines: 19 s before, 6 s with it).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._queue: list[tuple[LogTee, str]] = []
        self._size = 0
        self._window = 0.0
        self._count = 0
        self._thread: threading.Thread | None = None
        _batches.add(self)

    def _after_fork(self) -> None:
        # a task that forks while the helper thread holds the lock must not deadlock its child
        self.lock = threading.RLock()
        self._thread = None

    def write(self, tee: LogTee, s: str) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self._window > BATCH_DELAY:
                self._window, self._count = now, 0
            self._count += 1
            self._queue.append((tee, s))
            self._size += len(s)
            if self._count <= BURST_WRITES or self._size >= BATCH_CHARS:
                self.drain()
            elif self._thread is None:
                # the copied context keeps e.g. ipykernel's parent header: output lands in the right cell
                self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                                name="pyx-log-batch", daemon=True)
                self._thread.start()

    def drain(self) -> None:
        """Pass everything queued to the tees' redacting streams, in order."""
        with self.lock:
            queue, self._queue, self._size = self._queue, [], 0
            i = 0
            while i < len(queue):
                tee, j = queue[i][0], i + 1
                while j < len(queue) and queue[j][0] is tee:
                    j += 1
                tee._pass("".join(s for _, s in queue[i:j]))
                i = j

    def _run(self) -> None:
        idle = 0
        while True:
            time.sleep(BATCH_DELAY)
            with self.lock:
                if not self._queue:
                    idle += 1
                    if idle * BATCH_DELAY >= 0.5:  # quiet for half a second: stop (a burst restarts it)
                        self._thread = None
                        return
                    continue
                idle = 0
                try:
                    self.drain()
                except Exception:  # e.g. a write after the log was closed: never an error in a thread
                    pass


_batches: weakref.WeakSet[WriteBatch] = weakref.WeakSet()


def _reset_batches_after_fork() -> None:
    for batch in list(_batches):
        batch._after_fork()


os.register_at_fork(after_in_child=_reset_batches_after_fork)


class LogTee(io.TextIOBase):
    """A text stream that redacts, writes everything to the log file and forwards a bounded
    amount to the live output; past ``live_limit`` characters the live output gets one pointer
    to the log instead. Tees sharing a :class:`WriteBatch` keep their relative order."""

    def __init__(
        self,
        log: Any,
        live: Any,
        redactor: Redactor,
        *,
        live_limit: int,
        log_hint: str,
        shared: Callable[[str], None] | None = None,
        batch: WriteBatch | None = None,
    ) -> None:
        self._live = live
        self._log = log
        self._live_limit = live_limit
        self._hint = log_hint
        self.live_chars = 0
        self.truncated_live = False
        self._sink = shared or self._emit
        self._stream = redactor.stream(self._sink) if shared is None else None
        self._batch = batch or WriteBatch()

    def _emit(self, text: str) -> None:
        self._log.write(text.encode("utf-8", "surrogateescape"))
        self._log.flush()
        self.forward(text)

    def forward(self, text: str) -> None:
        if self._live is None or self.truncated_live:
            return
        room = self._live_limit - self.live_chars
        if len(text) > room:
            text = text[: max(room, 0)]
            self.truncated_live = True
        if text:
            self._live.write(text)
            self.live_chars += len(text)
        if self.truncated_live:
            self._live.write(f"\n[pyx] output truncated here; the full log is {self._hint}\n")
        try:
            self._live.flush()
        except Exception:
            pass

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if s:
            self._batch.write(self, s)
        return len(s)

    def _pass(self, s: str) -> None:
        if self._stream is not None:
            self._stream.write(s)
        else:
            self._sink(s)

    def flush(self) -> None:
        with self._batch.lock:
            self._batch.drain()
            if self._stream is not None:
                self._stream.flush()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def isatty(self) -> bool:
        return False


# ---------------------------------------------------------------- namespace


IGNORED_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "pyx", "_", "__", "___"}


def code_names(code: Any) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= code_names(const)
    return names


def _fingerprint(obj: Any) -> str:
    try:
        mod = type(obj).__module__
        if mod.startswith("pandas") and hasattr(obj, "shape"):
            if len(obj) > 1_000_000:
                return "not hashed (large)"
            import pandas as pd

            return "%016x" % (int(pd.util.hash_pandas_object(obj, index=True).sum()) & (2**64 - 1))
        if isinstance(obj, (str, bytes)):
            data = obj.encode("utf-8", "surrogateescape") if isinstance(obj, str) else obj
            return hashlib.sha256(data).hexdigest()[:16]
        if isinstance(obj, (int, float, bool, type(None))) or (
            isinstance(obj, (list, tuple, dict, set, frozenset)) and len(obj) <= 10_000
        ):
            return hashlib.sha256(repr(obj).encode("utf-8", "replace")).hexdigest()[:16]
    except Exception:
        return "unavailable"
    return "-"


def summarize(obj: Any) -> str:
    """Shape/len, dtype and a content fingerprint; never the value itself."""
    parts: list[str] = []
    shape = getattr(obj, "shape", None)
    if isinstance(shape, tuple):
        parts.append("shape=" + "x".join(map(str, shape)))
    else:
        try:
            parts.append(f"len={len(obj)}")
        except Exception:
            pass
    dtype = getattr(obj, "dtype", None)
    if dtype is not None:
        parts.append(f"dtype={dtype}")
    elif hasattr(obj, "dtypes") and hasattr(obj, "columns"):
        try:
            parts.append("columns=" + ",".join(map(str, list(obj.columns)[:20])))
        except Exception:
            pass
    parts.append(f"sha={_fingerprint(obj)}")
    return " ".join(parts)


def type_name(obj: Any) -> str:
    t = type(obj)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def snapshot_ids(ns: dict[str, Any]) -> dict[str, int]:
    return {k: id(v) for k, v in ns.items() if not k.startswith("_") and k not in IGNORED_NAMES}


def namespace_changes(
    ns: dict[str, Any], before: dict[str, int], names_used: set[str], redactor: Redactor
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(reads, writes) as manifest entries."""

    def entry(name: str) -> dict[str, str]:
        obj = ns[name]
        return {"name": name, "type": type_name(obj), "summary": redactor.text(summarize(obj))}

    reads = [entry(n) for n in sorted(names_used & before.keys()) if n in ns and callable_ok(ns[n])]
    writes = [
        entry(n)
        for n in sorted(ns)
        if not n.startswith("_") and n not in IGNORED_NAMES and before.get(n) != id(ns[n]) and callable_ok(ns[n])
    ]
    return reads, writes


def callable_ok(obj: Any) -> bool:
    """Modules, functions and classes are not data: leave them out of the namespace record."""
    import types

    return not isinstance(obj, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type))
