"""Executors: how a task body runs. In process (the magic) or as a child process (``pyx run``).

Both hand an :class:`~pyx_magics.runner.Outcome` back to the one orchestration path.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import CodeType
from typing import Any

from pyx_magics.capture import code_names, namespace_changes, snapshot_ids
from pyx_magics.context import TaskContext
from pyx_magics.core.errors import WrongEnvironment
from pyx_magics.core.history import read_lines
from pyx_magics.core.redact import Redactor
from pyx_magics.runner import Executor, Outcome, Run, capture, error_record


class TaskTimeout(BaseException):
    """Raised inside a task body when its ``--timeout`` expires (BaseException: ``except Exception`` can't eat it)."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise TaskTimeout in the main thread after ``seconds`` (SIGALRM also interrupts blocking calls)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise TaskTimeout(f"task exceeded its timeout of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def compile_cell(source: str, filename: str) -> tuple[CodeType, CodeType | None]:
    """Compile a cell; a trailing expression is compiled apart so its value can be displayed."""
    import ast

    tree = ast.parse(source, filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        expr = tree.body.pop()
        assert isinstance(expr, ast.Expr)
        last = ast.Expression(expr.value)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    body = compile(tree, filename, "exec")
    return body, compile(last, filename, "eval") if last is not None else None


def short_traceback(exc: BaseException, filename: str) -> str:
    """The traceback from the first frame of the task's own code on."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def outcome_for(exc: BaseException, redactor: Redactor, filename: str) -> Outcome:
    record = error_record(exc, redactor)
    record["traceback"] = redactor.text(short_traceback(exc, filename))
    if isinstance(exc, TaskTimeout):
        return Outcome("timed_out", record)
    if isinstance(exc, KeyboardInterrupt):
        return Outcome("interrupted", record)
    if isinstance(exc, WrongEnvironment):
        record["traceback"] = None
        return Outcome("refused", record)
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return Outcome("succeeded")
    return Outcome("failed", record)


def in_process(source: str, ns: dict[str, Any], *, timeout: float | None = None,
               live_out: Any = None, live_err: Any = None) -> Executor:
    """Run ``source`` (plain Python) in namespace ``ns`` with ``pyx`` bound to the task context."""

    def execute(run: Run) -> Outcome:
        filename = f"<pyx_run {run.task} {run.run_id}>"
        body, last = compile_cell(source, filename)
        ctx = TaskContext(run)
        missing = object()
        previous_pyx = ns.get("pyx", missing)
        ns["pyx"] = ctx
        before = snapshot_ids(ns)
        outcome = Outcome("succeeded")
        with capture(run, live_out or sys.stdout, live_err or sys.stderr) as (out, err):
            saved = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = out, err
            try:
                with deadline(timeout):
                    exec(body, ns)
                    if last is not None:
                        outcome.value = eval(last, ns)
            except BaseException as exc:
                outcome = outcome_for(exc, run.redactor, filename)
                if outcome.error and outcome.error.get("traceback"):
                    err.write(outcome.error["traceback"])
            finally:
                sys.stdout, sys.stderr = saved
                ctx.close()
                if previous_pyx is missing:
                    ns.pop("pyx", None)
                else:
                    ns["pyx"] = previous_pyx
        outcome.reads, outcome.writes = namespace_changes(ns, before, code_names(body), run.redactor)
        linecache.cache.pop(filename, None)
        return outcome

    return execute


def child_env(run: Run, events: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PYX_INPUT_PATH": str(run.input_path), "PYX_OUTPUT_DIR": str(run.dir), "PYX_OUTPUT_PATH": str(run.manifest_path),
        "PYX_LOG_PATH": str(run.log_path), "PYX_RUN_ID": run.run_id, "PYX_TASK": run.task,
        "PYX_TOPIC": run.session.topic, "PYX_SESSION_ID": run.session.session_id, "PYX_ENV": run.session.env_label,
        "PYX_EVENTS_PATH": str(events), "PYTHONUNBUFFERED": "1",
    })
    if run.request.allow_write:
        env["PYX_ALLOW_WRITE"] = run.request.allow_write
    else:
        env.pop("PYX_ALLOW_WRITE", None)
    return env


def _pump(stream: Any, tee: Any) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        tee.write(chunk.decode("utf-8", "surrogateescape"))
    stream.close()


def _stop_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def as_child(script: Path, args: list[str], *, timeout: float | None = None,
             live_out: Any = None, live_err: Any = None) -> Executor:
    """Run a Python script in a child interpreter that installs the task context and audit hook."""

    def execute(run: Run) -> Outcome:
        events = run.dir / f".{run.run_id}.events.jsonl"
        cmd = [sys.executable, "-m", "pyx_magics.child", str(script), *args]
        status = "succeeded"
        with capture(run, live_out or sys.stdout, live_err or sys.stderr) as (out, err):
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=child_env(run, events), start_new_session=True)
            pumps = [threading.Thread(target=_pump, args=(proc.stdout, out), daemon=True),
                     threading.Thread(target=_pump, args=(proc.stderr, err), daemon=True)]
            for t in pumps:
                t.start()
            try:
                code = proc.wait(timeout=timeout)
                status = "succeeded" if code == 0 else "failed"
            except subprocess.TimeoutExpired:
                status = "timed_out"
                _stop_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    _stop_group(proc, signal.SIGKILL)
                    proc.wait()
            except KeyboardInterrupt:
                status = "interrupted"
                _stop_group(proc, signal.SIGINT)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _stop_group(proc, signal.SIGKILL)
                    proc.wait()
            for t in pumps:
                t.join(timeout=10)
        return merge_child_events(run, events, status, proc.returncode, timeout)

    return execute


def merge_child_events(run: Run, events: Path, status: str, returncode: int | None,
                       timeout: float | None) -> Outcome:
    """Fold what the child recorded (declared outputs, targets, access, audit, error) into the run."""
    outcome = Outcome(status)
    for ev in read_lines(events):
        kind = ev.get("event")
        if kind == "output" and isinstance(ev.get("path"), str):
            run.explicit[ev["path"]] = str(ev.get("role") or "output")
        elif kind == "target" and isinstance(ev.get("entry"), dict):
            run.add_target(ev["entry"])
        elif kind == "access" and isinstance(ev.get("entry"), dict):
            run.add_access(ev["entry"])
        elif kind == "audit":
            run.audit_reads |= set(ev.get("reads") or [])
            run.audit_writes |= set(ev.get("writes") or [])
        elif kind == "error" and status != "timed_out":
            outcome.error = {k: run.redactor.text(str(ev.get(k) or "")) or None for k in ("type", "message", "traceback")}
            outcome.error["message"] = outcome.error["message"] or ""
            outcome.status = "interrupted" if ev.get("type") == "KeyboardInterrupt" else "failed"
    with contextlib.suppress(FileNotFoundError):
        events.unlink()
    if outcome.status == "timed_out":
        outcome.error = {"type": "TaskTimeout", "message": f"task exceeded its timeout of {timeout:g} s",
                         "traceback": None}
    elif outcome.status == "failed" and outcome.error is None:
        outcome.error = {"type": "ExitCode", "message": f"the script exited with code {returncode}",
                         "traceback": None}
    return outcome

