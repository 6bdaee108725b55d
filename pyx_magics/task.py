"""Access to the running task's context from a script run by ``pyx run``.

>>> from pyx_magics import task
>>> pyx = task.current()
"""

from __future__ import annotations

from typing import Any

from pyx_magics.core.errors import UsageProblem

_current: Any = None


def current() -> Any:
    """The ``pyx`` task context of the running task."""
    if _current is None:
        raise UsageProblem("no pyx task is running", hint="run the script with `pyx run --file SCRIPT`")
    return _current
