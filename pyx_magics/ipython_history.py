"""IPython's input history, written at the end of each cell instead of at its start.

By default IPython hands each cell's input to its history thread as the cell starts
(``HistoryManager.db_cache_size`` 0), and the thread commits it to SQLite, syncing the database
to disk. On ext4 that sync stalls the file writes of a ``%%pyx_run`` task running at the same
moment: measured here, a trivial task's file creations took 3-6x longer, and a papermill notebook
of 200 tasks went from 3.1 s to 2.3 s once the write moved to the cell's end. While pyx is loaded,
the trigger is raised and pyx asks for the write itself in ``post_run_cell``: the same history,
written once per cell, a few milliseconds later. A history configured otherwise (in memory,
disabled, or with its own ``db_cache_size``) is left as it is.
"""

from __future__ import annotations

import contextlib
from typing import Any

NEVER = 1 << 62  #: a cache size IPython's own trigger never reaches


class DeferredHistory:
    """Registered on ``post_run_cell`` while pyx is loaded (``ip._pyx_history``)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.previous = manager.db_cache_size

    def post_run_cell(self, result: Any = None) -> None:
        try:
            restart = getattr(self.manager, "_restart_thread_if_stopped", None)
            if restart is not None:
                restart()  # IPython's own call before it sets the flag (the thread stops at fork)
            flag = getattr(self.manager, "save_flag", None)
            if flag is not None:
                flag.set()
        except Exception:  # an observer never breaks the user's cell; IPython writes the rest at exit
            pass


def defer(shell: Any) -> DeferredHistory | None:
    """Move the history write of ``shell`` to the end of each cell, when IPython's defaults are in use."""
    existing = getattr(shell, "_pyx_history", None)
    if existing is not None:
        return existing
    manager = getattr(shell, "history_manager", None)
    if manager is None or not getattr(manager, "enabled", False) or getattr(manager, "db_cache_size", None) != 0 \
            or getattr(manager, "save_flag", None) is None:
        return None  # no history thread, or a user's own setting: nothing to move
    deferred = DeferredHistory(manager)
    manager.db_cache_size = NEVER
    shell.events.register("post_run_cell", deferred.post_run_cell)
    shell._pyx_history = deferred
    return deferred


def restore(shell: Any) -> None:
    """Undo :func:`defer`: IPython's own trigger again, and whatever is cached written now."""
    deferred = getattr(shell, "_pyx_history", None)
    if deferred is None:
        return
    with contextlib.suppress(ValueError):
        shell.events.unregister("post_run_cell", deferred.post_run_cell)
    deferred.manager.db_cache_size = deferred.previous
    deferred.post_run_cell()
    del shell._pyx_history
