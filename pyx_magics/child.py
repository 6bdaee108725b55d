"""Bootstrap of a ``pyx run`` script: ``python -m pyx_magics.child SCRIPT [ARGS...]``.

Installs the task context (``pyx`` in the script's globals, or ``pyx_magics.task.current()``)
and the audit hook, runs the script, and reports declared outputs, data access, the
files it opened and any error to the parent through ``PYX_EVENTS_PATH``.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pyx_magics import task
from pyx_magics.capture import start_audit, stop_audit
from pyx_magics.context import TaskContext
from pyx_magics.core.history import append_line
from pyx_magics.core.redact import Redactor
from pyx_magics.runner import output_path, role_for


class ChildRecorder:
    """The child's side of a Run: the same recorder API, reported as events to the parent."""

    def __init__(self, environ: dict[str, str] | os._Environ[str]) -> None:
        self.events = Path(environ["PYX_EVENTS_PATH"])
        self.run_id = environ["PYX_RUN_ID"]
        self.dir = Path(environ["PYX_OUTPUT_DIR"])
        self.task = environ.get("PYX_TASK", "task")
        self.redactor = Redactor.from_env(environ)
        with open(environ["PYX_INPUT_PATH"], encoding="utf-8") as f:
            params = json.load(f)
        allow = environ.get("PYX_ALLOW_WRITE")
        self.request = SimpleNamespace(params=params, allow_write=allow or None)
        self.session = SimpleNamespace(topic=environ.get("PYX_TOPIC", "investigation"),
                                       env_label=environ.get("PYX_ENV", "local"), dir=self.dir)
        self.write_allowed = bool(allow)

    def _emit(self, record: dict[str, Any]) -> None:
        append_line(self.events, record)

    def declare_output(self, name: str, role: str | None = None) -> Path:
        path = output_path(self.dir, self.run_id, name)
        self._emit({"event": "output", "path": str(path), "role": role or role_for(path.name)})
        return path

    def add_target(self, entry: dict[str, Any]) -> None:
        self._emit({"event": "target", "entry": self.redactor.json(entry)})

    def add_access(self, entry: dict[str, Any]) -> None:
        self._emit({"event": "access", "entry": self.redactor.json(entry)})


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m pyx_magics.child SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    script = argv[0]
    recorder = ChildRecorder(os.environ)
    ctx = TaskContext(recorder)
    task._current = ctx
    own = [os.environ.get(k, "") for k in ("PYX_LOG_PATH", "PYX_OUTPUT_PATH", "PYX_INPUT_PATH", "PYX_EVENTS_PATH")]
    own.append(script)  # the script is the task's code (recorded as <task>.py), not one of its inputs
    audit = start_audit(own)
    sys.argv = list(argv)
    code = 0
    try:
        runpy.run_path(script, init_globals={"pyx": ctx}, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        traceback.print_exc()
        recorder._emit({"event": "error", "type": type(exc).__name__,
                        "message": recorder.redactor.text(str(exc)),
                        "traceback": recorder.redactor.text(traceback.format_exc())})
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        stop_audit()
        ctx.close()
        recorder._emit({"event": "audit", "reads": sorted(audit.reads), "writes": sorted(audit.writes)})
        sys.stdout.flush()
        sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
