"""The C library, for the Linux system calls the standard library does not wrap (renameat2, inotify)."""

from __future__ import annotations

import functools
import sys
from typing import Any


@functools.cache
def libc() -> Any:
    """This process's C library (``ctypes.CDLL``), or None off Linux or where it cannot be opened.

    ``CDLL(None)`` is the running program with the libraries it already loaded, libc among them:
    no ``ctypes.util.find_library`` (which imports subprocess and may run ldconfig).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
