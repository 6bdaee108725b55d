"""``pyx run``: the MANIFEST_IO path for scripts outside notebooks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyx_magics.core.errors import UsageProblem
from pyx_magics.core.inputs import read_input_file
from pyx_magics.core.names import check_name
from pyx_magics.display import TaskSummary
from pyx_magics.execute import as_child
from pyx_magics.runner import Session, TaskRequest, run_task


def read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text("utf-8")
    except FileNotFoundError:
        raise UsageProblem(f"{what} {path!r} not found") from None
    except UnicodeDecodeError as exc:
        raise UsageProblem(f"{what} {path!r} is not valid UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise UsageProblem(f"{what} {path!r} cannot be read: {exc.strerror}") from None


def main(args: argparse.Namespace) -> int:
    if args.replay:
        from pyx_magics.replay import replay

        return replay(Path(args.replay), timeout=args.timeout)
    if not args.file:
        raise UsageProblem("pyx run needs --file SCRIPT (or --replay MANIFEST)")
    script = Path(args.file)
    source = read_text(args.file, "script")
    params = read_input_file(args.input_path) if args.input_path else {}
    task = check_name(args.task or script.stem.replace(" ", "_"), "task name")
    request = TaskRequest(task, source, params, args.timeout, args.allow_write)
    session = Session.start(args.dir, args.topic, args.env)
    executor = as_child(script.resolve(), list(args.args), timeout=args.timeout)
    run, final = run_task(session, request, executor)
    print(repr(TaskSummary(final)), file=sys.stderr)
    print(run.manifest_path)
    return 0 if final["status"] == "succeeded" else 1
