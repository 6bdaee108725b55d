"""IPython magics: argument parsing → runner → display. The only writer of ``user_ns``.

User mistakes become a plain ``UsageError`` (one line, no traceback).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display, publish_display_data

from pyx_magics import ipython_history
from pyx_magics.core.errors import PyxError, UsageProblem
from pyx_magics.core.inputs import read_input_file, validate_input
from pyx_magics.core.names import check_name
from pyx_magics.display import TaskSummary
from pyx_magics.execute import in_process
from pyx_magics.journal import NOTE_KINDS
from pyx_magics.journal import append as append_journal
from pyx_magics.runner import Session, TaskRequest, run_task


@contextlib.contextmanager
def redacted_display(shell: Any, redactor: Any) -> Iterator[None]:
    """While a task runs, everything it displays (DataFrames, values, HTML) is redacted on its way out."""
    pub = getattr(shell, "display_pub", None)
    if pub is None:
        yield
        return
    original = pub.publish

    def publish(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        clean = {k: redactor.text(v) if isinstance(v, str) else redactor.json(v) if isinstance(v, (dict, list))
                 else v for k, v in (data or {}).items()}
        return original(clean, *args, **kwargs)

    pub.publish = publish
    try:
        yield
    finally:
        pub.publish = original


def show_summary(shell: Any, final: dict[str, Any], redactor: Any) -> None:
    """Show the run's summary (HTML and text), published directly: ``display()``'s formatter pass and
    ipykernel's two blocking stream flushes cost more than the rest of a trivial task's display."""
    summary = TaskSummary(final)
    data = {"text/plain": redactor.text(repr(summary)), "text/html": redactor.text(summary._repr_html_())}
    if not send_display(getattr(shell, "display_pub", None), data):
        publish_display_data(data)


def _output_pending(stream: Any) -> bool:
    """Whether ``stream`` may hold text not yet sent (anything but an idle ipykernel OutStream: yes)."""
    return getattr(stream, "_flush_pending", True) is not False or getattr(stream, "_subprocess_flush_pending", False)


def send_display(pub: Any, data: dict[str, str]) -> bool:
    """Send a ``display_data`` message the way ipykernel's ``ZMQDisplayPublisher.publish`` does, minus
    its flush of stdout and stderr (a round trip to the IOPub thread each): only when no stream text
    is pending (so the order of outputs stays), no hook is registered (ipywidgets' output capture)
    and display history is off. Returns False, having sent nothing, when any of that does not hold
    or the publisher is not ipykernel's."""
    session, socket = getattr(pub, "session", None), getattr(pub, "pub_socket", None)
    if session is None or socket is None or not hasattr(session, "msg") or getattr(pub, "_hooks", True) \
            or getattr(pub, "store_display_history", True) or _output_pending(sys.stdout) or _output_pending(sys.stderr):
        return False
    msg = session.msg("display_data", {"data": data, "metadata": {}, "transient": {}}, parent=pub.parent_header)
    session.send(socket, msg, ident=pub.topic)
    return True


class TaskFailed(Exception):
    """The task body raised; its evidence is written. Shown as one line plus a pointer to the log."""


BARE_TASK = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*")  # a task name and no option


def parse_line(magic: Any, line: str) -> Any:
    """Parse a magic's line with shell quoting (``--allow-write "INC-1042: fix"`` gives the bare reason)."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot parse {line!r}: {exc}") from None
    return magic.parser.parse_args(argv)


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is a JSON literal when it parses as one, else a string; dotted keys nest."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"--param {key}: {part!r} is not an object")
        node[leaf] = value
    return params


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@magics_class
class PyxMagics(Magics):
    """``%pyx_topic``, ``%%pyx_run`` and friends."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.session: Session | None = None
        self._run_defaults: Any = None

    def _bare_run_args(self, task: str) -> Any:
        """``%%pyx_run TASK`` alone: argparse's answer without argparse (a tenth of a trivial task's time)."""
        if self._run_defaults is None:
            self._run_defaults = parse_line(self.pyx_run, "task")
        args = copy.copy(self._run_defaults)
        args.task = task
        return args

    # ------------------------------------------------------------ session
    def current_session(self) -> Session:
        if self.session is None:
            ns = self.shell.user_ns if self.shell else {}
            topic = os.environ.get("PYX_TOPIC") or (ns.get("topic") if isinstance(ns.get("topic"), str) else None)
            label = ns.get("environment_label") if isinstance(ns.get("environment_label"), str) else None
            self.session = Session.start(None, topic, label)
        return self.session

    @magic_arguments()
    @argument("topic", help="investigation topic, e.g. order-1042-pending ([A-Za-z0-9_.-])")
    @argument("--dir", default=None, help="investigation directory (default: $PYX_DIR or ./temp)")
    @argument("--env", default=None, help="declared environment label: prod, staging, local, ...")
    @argument("--new", action="store_true", help="start a new session instead of resuming the topic's last one")
    @line_magic
    def pyx_topic(self, line: str) -> None:
        """Start or resume an investigation: every later task is recorded under this topic."""
        args = parse_line(self.pyx_topic, line)
        try:
            self.session = Session.start(args.dir, args.topic, args.env, resume=not args.new)
        except PyxError as exc:
            raise UsageError(str(exc)) from None
        s = self.session
        print(f"pyx topic {s.topic} · session {s.session_id} · environment {s.env_label.upper()} · dir {s.dir}")

    # ------------------------------------------------------------ tasks
    @magic_arguments()
    @argument("task", help="task name ([A-Za-z0-9_.-], up to 100 characters)")
    @argument("--input", default=None, metavar="FILE", help="input JSON file (time_window, entity_ids, notes, ...)")
    @argument("--param", action="append", metavar="KEY=VALUE",
              help="input parameter; VALUE is parsed as JSON when possible (quote it: --param 'ids=[1, 2]'); "
              "repeatable; dotted keys nest (time_window.start=...)")
    @argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop the task after SECONDS")
    @argument("--allow-write", default=None, metavar="REASON",
              help="open write access to data systems for this task only; the reason is recorded")
    @cell_magic
    def pyx_run(self, line: str, cell: str) -> Any:
        """Run the cell as a pyx task and record it as evidence (code, input, manifest, log, outputs).

        Inside the cell, ``pyx`` offers ``input``, ``run_id``, ``dir``, ``out(name)``,
        ``save(name, obj)``, ``db()``, ``redis()``, ``kafka()`` and ``diff(...)``.
        """
        bare = BARE_TASK.fullmatch(line)
        args = self._bare_run_args(bare.group(1)) if bare else parse_line(self.pyx_run, line)
        try:
            params: dict[str, Any] = {}
            if args.input:
                params = read_input_file(args.input)
            params = validate_input(merge(params, parse_params(args.param)))
            source = self.shell.transform_cell(cell) if self.shell else cell
            request = TaskRequest(args.task, source, params, args.timeout, args.allow_write,
                                  execution_count=cell_number(self.shell))
            session = self.current_session()  # only once the request is valid: a mistake writes nothing
            request.notebook = notebook_name(session.dir)
        except PyxError as exc:
            raise UsageError(str(exc)) from None
        assert self.shell is not None
        with redacted_display(self.shell, session.redactor):
            run, final = run_task(session, request, in_process(source, self.shell.user_ns, timeout=args.timeout))
            if run.value is not None:
                display(run.value)
            show_summary(self.shell, final, session.redactor)
        if final["status"] != "succeeded":
            err = final["error"] or {}
            raise TaskFailed(f"task {final['task']} {final['status']}: {err.get('type', '')}: "
                             f"{err.get('message', '')} (log: {final['log']['path']})")
        return None


    @magic_arguments()
    @argument("systems", nargs="*", metavar="SYSTEM", help="postgres, redis, kafka (default: every configured one)")
    @line_magic
    def pyx_fingerprint(self, line: str) -> None:
        """Fingerprint the data systems (each its own task): prove which servers this session reaches.

        The facts are written to ``fingerprint.<system>.<run_id>.json`` and left in ``pyx_fingerprints``.
        """
        from pyx_magics.datalayer.fingerprint import configured_systems, task_source

        args = parse_line(self.pyx_fingerprint, line)
        unknown = [s for s in args.systems if s not in ("postgres", "redis", "kafka")]
        if unknown:
            raise UsageError(f"unknown system(s) {', '.join(unknown)}: choose postgres, redis, kafka")
        systems = args.systems or configured_systems()
        if not systems:
            raise UsageError("no data system configured: set DATABASE_URL / REDIS_URL / KAFKA_BROKERS (see %pyx_env)")
        session = self.current_session()
        assert self.shell is not None
        results: dict[str, Any] = {}
        failed = []
        for system in systems:
            source = task_source(system)
            request = TaskRequest(f"fingerprint_{system}", source,
                                  execution_count=cell_number(self.shell))
            ns: dict[str, Any] = {}
            _, final = run_task(session, request, in_process(source, ns))
            show_summary(self.shell, final, session.redactor)
            results[system] = ns.get("fingerprint")
            if final["status"] != "succeeded":
                failed.append(f"{system}: {(final['error'] or {}).get('message', final['status'])}")
        if failed:
            raise TaskFailed("fingerprint failed for " + "; ".join(failed))
        self.shell.user_ns["pyx_fingerprints"] = results  # the facts, for the cells that follow

    # ------------------------------------------------------------ environment and notes
    @magic_arguments()
    @argument("--no-ports", action="store_true", help="do not probe whether the configured ports are listening")
    @line_magic
    def pyx_env(self, line: str) -> None:
        """Show the environment label, configured endpoints (secrets hidden) and which local ports listen now."""
        from pyx_magics.info import collect, render

        args = parse_line(self.pyx_env, line)
        data = collect(check_ports=not args.no_ports)
        if self.session is not None:
            data["environment_label"] = self.session.env_label
        print(render(data))

    @magic_arguments()
    @argument("kind", help="one of: " + " ".join(NOTE_KINDS))
    @argument("text", nargs="+", help="the note; for `action` add owner=NAME due=YYYY-MM-DD; any note may name "
              "the tasks that prove it with evidence=TASK[,TASK...]")
    @line_magic
    def pyx_note(self, line: str) -> None:
        """Add a structured note (problem, hypothesis, finding, root_cause, action, ...) to the journal."""
        args = parse_line(self.pyx_note, line)
        try:
            record = build_note(args.kind, args.text)
        except PyxError as exc:
            raise UsageError(str(exc)) from None
        s = self.current_session()
        record["execution_count"] = cell_number(self.shell)
        record["text"] = s.redactor.text(record["text"])
        append_journal(s.dir, s.topic, s.session_id, record)
        print(f"noted {record['note']}: {record['text']}")


    @magic_arguments()
    @argument("what", nargs="?", default="all", choices=("inspect", "summary", "learn", "all"),
              help="which report (default: all)")
    @argument("--notebook", default=None, metavar="PATH",
              help="the saved notebook to read (default: the one Jupyter says is open, else the journal only)")
    @argument("--project-prefix", action="append", default=[], metavar="PREFIX",
              help="project prefix to de-project from the global learn package (repeatable)")
    @line_magic
    def pyx_export(self, line: str) -> None:
        """Write the investigation log, the summary and/or learn packages of this session."""
        from pyx_magics.core.errors import PyxError as _PyxError

        args = parse_line(self.pyx_export, line)
        s = self.current_session()
        notebook = args.notebook or os.environ.get("JPY_SESSION_NAME")
        try:
            if notebook and Path(notebook).suffix == ".ipynb" and Path(notebook).is_file():
                from pyx_magics.report import export_notebook

                written = export_notebook(notebook, args.what, directory=s.dir, prefixes=args.project_prefix)
            elif args.notebook:
                raise UsageError(f"--notebook {args.notebook}: no such notebook")
            else:  # a live kernel (or papermill) with no saved notebook: journal + manifests
                from pyx_magics.report.exporters import export_investigation
                from pyx_magics.report.model import load_session

                inv = load_session(s.dir, s.topic, s.session_id)
                written, leaks = export_investigation(inv, args.what, prefixes=args.project_prefix)
                if leaks:
                    print(f"warning: {len(leaks)} project identifier(s) left in the global learn package")
        except _PyxError as exc:
            raise UsageError(str(exc)) from None
        shown = sorted({p if p.parent == s.dir else next(q for q in p.parents if q.parent == s.dir) for p in
                        map(Path, written) if s.dir in p.parents})
        for path in shown:
            print(f"wrote {path.relative_to(s.dir.parent)}{'/' if path.is_dir() else ''}")


def notebook_name(root: Path) -> str | None:
    """The open notebook (Jupyter tells its kernels through ``JPY_SESSION_NAME``), relative to the
    investigation directory's parent when inside it, else its bare name: manifests hold no absolute paths."""
    name = os.environ.get("JPY_SESSION_NAME")
    if not name:
        return None
    path = Path(name)
    try:
        return path.resolve().relative_to(root.parent).as_posix()
    except ValueError:
        return path.name


def cell_number(shell: Any) -> int | None:
    """The running cell's number: IPython advances ``execution_count`` before the cell runs."""
    n = getattr(shell, "execution_count", None)
    return n - 1 if isinstance(n, int) and n > 1 else n


def build_note(kind: str, words: list[str]) -> dict[str, Any]:
    """A note record; ``action`` notes take ``owner=`` and ``due=YYYY-MM-DD``."""
    from datetime import UTC, date, datetime

    if kind not in NOTE_KINDS:
        raise UsageProblem(f"unknown note kind {kind!r}", hint="use one of: " + ", ".join(NOTE_KINDS))
    fields: dict[str, Any] = {}
    text_words = []
    for w in words:
        key, sep, value = w.partition("=")
        if sep and key in ("owner", "due", "evidence"):
            fields[key] = value
        else:
            text_words.append(w)
    if "due" in fields:
        try:
            date.fromisoformat(fields["due"])
        except ValueError:
            raise UsageProblem(f"due={fields['due']!r} is not a date (YYYY-MM-DD)") from None
    if kind != "action" and ("owner" in fields or "due" in fields):
        raise UsageProblem("owner= and due= are only for `action` notes")
    if "evidence" in fields:
        fields["evidence"] = [check_name(t, "task name") for t in fields["evidence"].split(",") if t]
    text = " ".join(text_words).strip()
    if not text:
        raise UsageProblem("the note has no text")
    return {"kind": "note", "note": kind, "text": text, **fields, "at": datetime.now(UTC).isoformat(timespec="milliseconds")}


def _show_task_failed(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> Any:
    print(f"TaskFailed: {value}")
    return ["TaskFailed", str(value)]


def load(ipython: Any) -> None:
    """Register the magics once; loading twice is harmless."""
    if getattr(ipython, "_pyx_magics", None) is not None:
        return
    magics = PyxMagics(ipython)
    ipython.register_magics(magics)
    ipython._pyx_magics = magics
    ipython._pyx_prev_custom_exc = (getattr(ipython, "custom_exceptions", ()),
                                    getattr(ipython, "CustomTB", None))
    ipython.set_custom_exc((TaskFailed,), _show_task_failed)
    ipython_history.defer(ipython)


def unload(ipython: Any) -> None:
    """Remove exactly what :func:`load` added."""
    magics = getattr(ipython, "_pyx_magics", None)
    if magics is None:
        return
    for kind, names in magics.magics.items():
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
    ipython.magics_manager.registry.pop(type(magics).__name__, None)
    excs, handler = ipython._pyx_prev_custom_exc
    ipython.custom_exceptions = excs
    if handler is not None:
        ipython.CustomTB = handler
    else:
        ipython.set_custom_exc((), None)
    ipython_history.restore(ipython)
    del ipython._pyx_magics
    del ipython._pyx_prev_custom_exc
