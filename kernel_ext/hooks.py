"""The cell journal: ``pre_run_cell``/``post_run_cell`` observers writing one line per executed cell.

Each line of ``<topic>.<session_id>.journal.jsonl`` is ``{"kind": "cell", execution_count, sha256,
source, started_at, ended_at, duration_ms, status, error_type, run_ids}``, with the source
redacted by the session's redactor (``sha256`` is of the redacted source, like the manifests' code hash).

The hooks are observers: constant work per cell (no directory scans, one hash of the cell
source, one appended line), failures are logged and never reach the user's cell, and a depth
guard keeps a nested ``shell.run_cell`` (a magic running its body as a cell) from writing a
second line. The journal belongs to a session: cells run before any session exists are kept
in memory (at most ``PENDING_LIMIT``) and written when one starts, so a papermill parameter
``topic`` injected after the notebook's first cell still names the session.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pyx_magics.core.hashing import sha256_bytes
from pyx_magics.core.manifest import rfc3339, utc_now
from pyx_magics.journal import append, journal_path

log = logging.getLogger(__name__)

PENDING_LIMIT = 1000  # cells remembered before a session exists; older ones are dropped


@dataclass
class _Cell:
    """What ``post_run_cell`` needs from ``pre_run_cell``."""

    started_at: str
    t0: float
    session: Any  # the session when the cell started (None before one exists)
    runs_before: int  # len(session.cell_run_ids) at the start


@dataclass
class _Pending:
    raw: str
    record: dict[str, Any] = field(default_factory=dict)


class CellJournal:
    """Registered on ``ip.events``; one instance per shell (``ip._pyx_kernel_hooks``)."""

    def __init__(self, shell: Any, *, owns_magics: bool) -> None:
        self.shell = shell
        self.owns_magics = owns_magics  # whether unloading kernel_ext should also unload the magics
        self.depth = 0
        self.cell: _Cell | None = None
        self.pending: deque[_Pending] = deque(maxlen=PENDING_LIMIT)
        self.bannered = False
        self.dropped = 0  # pending cells pushed out of the buffer

    # ------------------------------------------------------------ events
    def pre_run_cell(self, info: Any = None) -> None:
        self.depth += 1
        if self.depth > 1:
            return  # a cell run from inside a cell: the outer cell's line covers it
        try:
            session = self._session()
            self.cell = _Cell(rfc3339(utc_now()), time.perf_counter(), session,
                              len(session.cell_run_ids) if session is not None else 0)
        except Exception:
            self.cell = None
            log.exception("pyx journal: pre_run_cell failed")

    def post_run_cell(self, result: Any = None) -> None:
        if self.depth == 0:
            return  # no matching pre_run_cell (an empty cell, or loaded mid-cell)
        self.depth -= 1
        if self.depth > 0:
            return
        cell, self.cell = self.cell, None
        if cell is None:
            return
        try:
            self._record(cell, result)
        except Exception:
            log.exception("pyx journal: post_run_cell failed")

    # ------------------------------------------------------------ work
    def _session(self) -> Any:
        magics = getattr(self.shell, "_pyx_magics", None)
        return getattr(magics, "session", None)

    def _record(self, cell: _Cell, result: Any) -> None:
        ended = utc_now()
        info = getattr(result, "info", None)
        raw = getattr(info, "raw_cell", None) or ""
        error: BaseException | None = None
        if result is None:  # ipykernel passes None when SIGINT cancelled the cell
            error = KeyboardInterrupt()
        else:
            error = result.error_before_exec if result.error_before_exec is not None else result.error_in_exec
        session = self._session()
        if session is None:
            run_ids: list[str] = []
        elif session is cell.session:
            run_ids = session.cell_run_ids[cell.runs_before:]
        else:  # the session started (or was replaced) during this cell
            run_ids = list(session.cell_run_ids)
        record = {
            "kind": "cell",
            "execution_count": getattr(result, "execution_count", None),
            "sha256": None,
            "source": None,
            "started_at": cell.started_at,
            "ended_at": rfc3339(ended),
            "duration_ms": round((time.perf_counter() - cell.t0) * 1000, 3),
            "status": "ok" if error is None else "error",
            "error_type": type(error).__name__ if error is not None else None,
            "run_ids": list(run_ids),
        }
        if session is None:
            if len(self.pending) == self.pending.maxlen:
                self.dropped += 1
            self.pending.append(_Pending(raw, record))
            return
        new_session = session is not cell.session
        for item in self._drain():
            self._write(session, item.raw, item.record)
        self._write(session, raw, record)
        if new_session and not self.bannered:
            self.bannered = True
            if "pyx_topic" not in raw:  # %pyx_topic prints its own banner
                print(banner(session), file=sys.stdout)

    def _drain(self) -> list[_Pending]:
        if self.dropped:
            log.warning("pyx journal: %d cell(s) run before the session started were not kept", self.dropped)
            self.dropped = 0
        items = list(self.pending)
        self.pending.clear()
        return items

    @staticmethod
    def _write(session: Any, raw: str, record: dict[str, Any]) -> None:
        source = session.redactor.text(raw)
        record["source"] = source
        record["sha256"] = sha256_bytes(source.encode("utf-8", "surrogateescape"))
        append(session.dir, session.topic, session.session_id, record)


def banner(session: Any) -> str:
    """One line naming the topic, session, declared environment and journal file."""
    journal = journal_path(session.dir, session.topic, session.session_id)
    return (f"pyx kernel · topic {session.topic} · session {session.session_id} · "
            f"environment {str(session.env_label).upper()} · journal {journal}")


EVENTS = ("pre_run_cell", "post_run_cell")


def register(shell: Any, *, owns_magics: bool) -> CellJournal:
    """Register the journal hooks once; a second call returns the existing instance."""
    existing = getattr(shell, "_pyx_kernel_hooks", None)
    if existing is not None:
        return existing
    journal = CellJournal(shell, owns_magics=owns_magics)
    for name in EVENTS:
        shell.events.register(name, getattr(journal, name))
    shell._pyx_kernel_hooks = journal
    return journal


def unregister(shell: Any) -> CellJournal | None:
    """Remove exactly the callbacks :func:`register` added; returns the removed instance."""
    journal = getattr(shell, "_pyx_kernel_hooks", None)
    if journal is None:
        return None
    for name in EVENTS:
        with contextlib.suppress(ValueError):
            shell.events.unregister(name, getattr(journal, name))
    del shell._pyx_kernel_hooks
    return journal
