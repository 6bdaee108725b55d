"""Names of tasks, topics, labels and output files, and paths kept inside the investigation directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pyx_magics.core.errors import UsageProblem

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a valid task/topic/label name, else raise UsageProblem."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value:
        shown = repr(value) if isinstance(value, str) else type(value).__name__
        raise UsageProblem(
            f"invalid {what} {shown}",
            hint="use 1-100 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit, no '..'",
        )
    return value


def check_output_name(value: str) -> str:
    """An output file name: a plain name, or ``sub/dir/name`` made of valid names."""
    if not isinstance(value, str) or "\x00" in value or value.startswith(("/", "\\")) or "\\" in value:
        raise UsageProblem(
            f"invalid output name {value!r}", hint="give a relative name inside the investigation directory"
        )
    for part in value.split("/"):
        if not NAME_RE.fullmatch(part) or ".." in part:
            raise UsageProblem(
                f"invalid output name {value!r}: part {part!r} is not allowed",
                hint="use parts of 1-100 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit, no '..'",
            )
    return value


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, refusing anything (symlinks included) that lands outside ``root``."""
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise UsageProblem(
            f"{relative!r} resolves outside the investigation directory {os.fspath(root)!r}",
            hint="remove the symlink or choose another name",
        )
    return target


def relpath(root: Path, path: str | os.PathLike[str]) -> str:
    """The POSIX path of ``path`` relative to ``root`` (for manifests: never absolute)."""
    return Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()
