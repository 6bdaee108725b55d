"""Which names appeared in or left a folder since the last look, from Linux inotify (no dependency).

The directory scan of a run (``capture.scan_dir``) needs the names in the investigation directory
before and after the task. Listing a folder of thousands of evidence files costs ~1 ms here, and pyx's
own writes change the folder's mtime at every run, so the mtime cannot tell that nothing else did.
inotify events are queued by the kernel during the syscall that changes the folder, in order, so the
names known from one listing plus the events since are exact: no racy window, unlike timestamps.

Where inotify is missing (not Linux, the per-user instance or watch limit reached), ``watcher()``
returns None or ``watch`` returns False and the caller lists the folder as before.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable

from pyx_magics.core.libc import libc

IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
NAME_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
SELF_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED
MAX_WATCHES = 512  #: folders watched per process at most; more are listed the slow way
_EVENT = struct.Struct("iIII")

#: called with (folder, name, present) for each name event, or (folder, None, False) when the
#: folder's names are no longer known (the folder was moved or deleted, or events were lost)
Sink = Callable[[str, "str | None", bool], None]


class DirWatch:
    """One inotify instance; ``watch`` folders, then ``drain`` hands their name events to ``sink``."""

    def __init__(self, fd: int, add: Callable[..., int], rm: Callable[..., int], sink: Sink) -> None:
        self._fd = fd
        self._add = add
        self._rm = rm
        self._sink = sink
        self._folders: dict[int, set[str]] = {}  # watch descriptor -> folders (paths) it stands for
        self._wds: dict[str, int] = {}

    def watching(self, folder: str) -> bool:
        return folder in self._wds

    def watch(self, folder: str) -> bool:
        """Start delivering ``folder``'s name events; call before listing it. False if that is not possible."""
        if folder in self._wds:
            return True
        if len(self._wds) >= MAX_WATCHES:
            return False
        wd = self._add(self._fd, os.fsencode(folder), NAME_EVENTS | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
        if wd < 0:
            return False
        self._folders.setdefault(wd, set()).add(folder)
        self._wds[folder] = wd
        return True

    def drain(self) -> None:
        """Read every queued event and pass it on, in order."""
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                self._lose_all()
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size: offset + _EVENT.size + size]
                offset += _EVENT.size + size
                self._event(wd, mask, raw.rstrip(b"\0"))

    def _event(self, wd: int, mask: int, raw: bytes) -> None:
        if mask & IN_Q_OVERFLOW:
            self._lose_all()
            return
        folders = self._folders.get(wd)
        if not folders:
            return
        if mask & SELF_EVENTS:
            for folder in folders:
                self._wds.pop(folder, None)
                self._sink(folder, None, False)
            del self._folders[wd]
            if not mask & IN_IGNORED:
                self._rm(self._fd, wd)  # moved away: this path no longer names that folder
            return
        if mask & NAME_EVENTS:
            name = os.fsdecode(raw)
            for folder in folders:
                self._sink(folder, name, bool(mask & (IN_CREATE | IN_MOVED_TO)))

    def _lose_all(self) -> None:
        for folder in list(self._wds):
            self._sink(folder, None, False)

    def close(self) -> None:
        os.close(self._fd)
        self._folders.clear()
        self._wds.clear()


_lock = threading.Lock()
_instance: DirWatch | None = None
_unavailable = False


def watcher(sink: Sink) -> DirWatch | None:
    """This process's watcher (created on first use), or None where inotify is not available."""
    global _instance, _unavailable
    with _lock:
        if _instance is None and not _unavailable:
            _instance = _open(sink)
            _unavailable = _instance is None
        return _instance


def _open(sink: Sink) -> DirWatch | None:
    import ctypes

    try:
        c = libc()
        init, add, rm = c.inotify_init1, c.inotify_add_watch, c.inotify_rm_watch
    except AttributeError:  # not Linux (None), or a libc without inotify
        return None
    add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    rm.argtypes = [ctypes.c_int, ctypes.c_int]
    fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return None
    return DirWatch(fd, add, rm, sink)


def _after_fork_in_child() -> None:
    # the child shares the parent's inotify queue: reading it would steal the parent's events
    global _instance, _unavailable, _lock
    _lock = threading.Lock()
    if _instance is not None:
        try:
            _instance.close()
        except OSError:
            pass
        _instance = None
    _unavailable = False


os.register_at_fork(after_in_child=_after_fork_in_child)
