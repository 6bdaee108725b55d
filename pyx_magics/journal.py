"""The session journal ``<topic>.<session_id>.journal.jsonl``: one line per executed cell, plus notes.

Pure (no IPython): the kernel hooks and ``%pyx_note`` call these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyx_magics.core.history import append_line, read_lines

NOTE_KINDS = ("problem", "expected", "scope", "hypothesis", "finding", "root_cause", "fix", "prevention",
              "impact", "action", "status")


def journal_path(root: Path, topic: str, session_id: str) -> Path:
    return root / f"{topic}.{session_id}.journal.jsonl"


def append(root: Path, topic: str, session_id: str, record: dict[str, Any]) -> None:
    """Append one record (``{"kind": "cell"|"note", ...}``) to the session's journal."""
    append_line(journal_path(root, topic, session_id), record)


def read(path: Path) -> list[dict[str, Any]]:
    return list(read_lines(path))
