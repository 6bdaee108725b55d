"""One orchestration path for every task: start manifest → run → capture → finalize.

Used by the ``%%pyx_run`` magic (in-process executor), ``pyx run`` (subprocess
executor) and, through them, the kernel and papermill. ``run_task`` reads like
the table of contents of a run.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import mimetypes
import os
import platform
import re
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyx_magics import __version__
from pyx_magics.capture import (
    PYX_OWN_SUFFIXES,
    LogTee,
    WriteBatch,
    changed_files,
    scan_dir,
    start_audit,
    stop_audit,
)
from pyx_magics.core import history, manifest
from pyx_magics.core.errors import UsageProblem, WrongEnvironment
from pyx_magics.core.hashing import (
    atomic_write,
    layout_json,
    pretty_json,
    sha256_bytes,
    sha256_file,
    write_if_changed,
)
from pyx_magics.core.inputs import check_input_size, validate_input
from pyx_magics.core.keys import logic_key, output_digest
from pyx_magics.core.names import check_name, check_output_name, inside, relpath
from pyx_magics.core.redact import POLICY, Redactor
from pyx_magics.core.runid import RUN_ID_RE, new_run_id
from pyx_magics.datalayer import guard

EMPTY_SHA256 = sha256_bytes(b"")
LIVE_LIMIT = 1_000_000  # characters of a task's output shown live; the log keeps everything
PACKAGES = ("ipython", "ipykernel", "nbformat", "nbconvert", "papermill", "pandas", "psycopg", "redis", "aiokafka")
CONVENTIONAL_ROLES = ("fingerprint", "db_rows", "redis_value", "kafka_offsets", "kafka_messages", "diff",
                      "expected_vs_actual")


# ---------------------------------------------------------------- session


@dataclass
class Session:
    """An investigation: a directory, a topic and a session id, shared by its runs."""

    dir: Path
    topic: str
    session_id: str
    env_label: str = "local"
    sequence: int = 0
    prev_manifest_sha256: str | None = None
    notebook: str | None = None
    redactor: Redactor = field(default_factory=Redactor.from_env)
    cell_run_ids: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, directory: str | os.PathLike[str] | None = None, topic: str | None = None,
              env_label: str | None = None, *, resume: bool = True) -> Session:
        """Start an investigation, or resume the latest session of ``topic`` in ``directory``."""
        topic = check_name(topic or os.environ.get("PYX_TOPIC") or "investigation", "topic")
        label = check_name(env_label or os.environ.get("PYX_ENV") or "local", "environment label")
        root = ensure_dir(directory)
        manifest.recover_interrupted(root)  # runs killed earlier (SIGKILL, crash) become `interrupted`
        state = root / f".session.{topic}.json"
        pinned = os.environ.get("PYX_SESSION_ID", "")  # `pyx rerun` pins its kernel to a new session
        pinned = pinned if RUN_ID_RE.fullmatch(pinned) else ""
        if (resume or pinned) and state.exists():
            try:
                data = json.loads(state.read_text("utf-8"))
                sid = str(data.get("session_id", ""))
                if RUN_ID_RE.fullmatch(sid) and sid == (pinned or sid):
                    s = cls(root, topic, data["session_id"], label if env_label else data.get("env_label", label),
                            int(data.get("sequence", 0)), data.get("prev_manifest_sha256"))
                    s.save_state()
                    return s
            except (OSError, ValueError):
                pass
        s = cls(root, topic, pinned or new_run_id(), label)
        s.save_state()
        return s

    def save_state(self) -> None:
        """Remember where the session is, for resume. Rewritten in place: creating a file costs ~0.5 ms
        here, and a torn state file only means the next ``%pyx_topic`` starts a fresh session."""
        data = pretty_json({
            "session_id": self.session_id, "topic": self.topic, "env_label": self.env_label,
            "sequence": self.sequence, "prev_manifest_sha256": self.prev_manifest_sha256,
        })
        name = f".session.{self.topic}.json"
        try:
            fd = os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise UsageProblem(f"{name} in {os.fspath(self.dir)!r} is a symbolic link; pyx never writes through one",
                               hint="remove the link") from None
        try:
            os.write(fd, data)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)


def ensure_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    """The investigation directory (``--dir``, ``PYX_DIR`` or ``temp``), created if needed."""
    root = Path(directory or os.environ.get("PYX_DIR") or "temp")
    if root.exists() and not root.is_dir():
        raise UsageProblem(f"{os.fspath(root)!r} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


# ---------------------------------------------------------------- request and run


@dataclass
class TaskRequest:
    """What to run: validated before anything is written."""

    task: str
    source: str
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    allow_write: str | None = None
    execution_count: int | None = None
    notebook: str | None = None

    def __post_init__(self) -> None:
        check_name(self.task, "task name")
        check_input_size(self.params)
        validate_input(self.params)
        if self.timeout is not None and not (self.timeout > 0):
            raise UsageProblem(f"timeout must be a positive number of seconds, got {self.timeout}")
        if self.allow_write is not None and not self.allow_write.strip():
            raise UsageProblem("--allow-write needs a reason, e.g. --allow-write 'fix order 1042 status'")


@dataclass
class Outcome:
    status: str = "failed"
    error: dict[str, Any] | None = None
    value: Any = None
    reads: list[dict[str, str]] = field(default_factory=list)
    writes: list[dict[str, str]] = field(default_factory=list)


class Run:
    """One task run; the recorder the task context and the data layer write into."""

    def __init__(self, session: Session, request: TaskRequest) -> None:
        self.session = session
        self.request = request
        self.run_id = new_run_id()
        self.dir = session.dir
        self.redactor = session.redactor
        self.task = request.task
        self.code_path = self.dir / f"{request.task}.py"
        self.input_path = self.dir / f"{request.task}.input.json"
        self.manifest_path = self.dir / manifest.manifest_name(request.task, self.run_id)
        self.log_path = self.dir / f"{request.task}.{self.run_id}.log.txt"
        self.explicit: dict[str, str] = {}  # absolute path -> role
        self.targets: list[dict[str, Any]] = []
        self.data_access: list[dict[str, Any]] = []
        self.started = manifest.utc_now()
        self.t0 = time.perf_counter()
        self.log_truncated = False
        self.extra_inputs: set[str] = set()
        self.audit_reads: set[str] = set()
        self.audit_writes: set[str] = set()
        self.dir_changes: list[str] = []
        self.record: dict[str, Any] = {}
        self.value: Any = None  # the value of the task's last expression, for the front end to show

    @property
    def write_allowed(self) -> bool:
        return self.request.allow_write is not None

    # -- recorder API used by the task context and the data layer
    def declare_output(self, name: str, role: str | None = None) -> Path:
        path = output_path(self.dir, self.run_id, name)
        self.explicit[str(path)] = role or role_for(path.name)
        return path

    def add_target(self, entry: dict[str, Any]) -> None:
        key = (entry.get("system"), entry.get("alias"))
        self.targets = [t for t in self.targets if (t.get("system"), t.get("alias")) != key]
        self.targets.append(self.redactor.json(entry))

    def add_access(self, entry: dict[str, Any]) -> None:
        self.data_access.append(self.redactor.json(entry))


def output_path(root: Path, run_id: str, name: str) -> Path:
    """Where output ``name`` of run ``run_id`` goes (created folders included): the run id is
    inserted before the extension so no run overwrites another's evidence."""
    check_output_name(name)
    if run_id not in name:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem}.{run_id}.{ext}" if dot and stem else f"{name}.{run_id}"
    path = inside(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def role_for(name: str) -> str:
    prefix = name.split(".", 1)[0]
    return prefix if prefix in CONVENTIONAL_ROLES else "output"


Executor = Callable[[Run], Outcome]


# ---------------------------------------------------------------- the orchestration path


def run_task(session: Session, request: TaskRequest, execute: Executor) -> tuple[Run, dict[str, Any]]:
    """Run one task and return (run, final manifest). Never loses the evidence of a failure."""
    run = open_run(session, request)
    outcome = Outcome()
    try:
        guard.preflight(run.dir, session.env_label, request.source)
        outcome = execute(run)
        run.value = outcome.value
    except WrongEnvironment as exc:
        outcome = Outcome("refused", error_record(exc, run.redactor, with_traceback=False))
    except BaseException as exc:  # the executor failed outside the task body
        outcome = Outcome("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                          error_record(exc, run.redactor))
        raise
    finally:
        final = finalize(run, outcome)
    return run, final


def open_run(session: Session, request: TaskRequest) -> Run:
    """Allocate the run id, write the code and input files and the ``running`` manifest."""
    run = Run(session, request)
    red = run.redactor
    source = red.text(request.source)
    params = red.json(request.params)
    session.sequence += 1
    input_bytes = layout_json(params)
    write_if_changed(run.code_path, source.encode("utf-8"))
    write_if_changed(run.input_path, input_bytes)
    run.record = base_manifest(run, source, params, sha256_bytes(input_bytes))
    manifest.write(run.manifest_path, manifest.seal(run.record, session.prev_manifest_sha256), new=True)
    manifest.note_started(run.dir, run.manifest_path.name)
    return run


def base_manifest(run: Run, source: str, params: dict[str, Any], input_sha256: str) -> dict[str, Any]:
    req, s = run.request, run.session
    code_sha = sha256_bytes(source.encode("utf-8"))
    return {
        "schema": manifest.SCHEMA,
        "run_id": run.run_id,
        "task": req.task,
        "topic": s.topic,
        "session_id": s.session_id,
        "sequence": s.sequence,
        "status": "running",
        "error": None,
        "timing": {"started_at": manifest.rfc3339(run.started), "ended_at": None, "duration_ms": None},
        "environment_label": s.env_label,
        "mode": {"access": "write" if req.allow_write else "read_only", "reason": req.allow_write},
        "code": {"path": run.code_path.name, "sha256": code_sha, "source": source,
                 "notebook": req.notebook or s.notebook, "execution_count": req.execution_count},
        "input": {"path": run.input_path.name, "sha256": input_sha256, "params": params},
        "files": {"inputs": [], "outputs": []},
        "namespace": {"reads": [], "writes": []},
        "targets": [],
        "data_access": [],
        "log": {"path": run.log_path.name, "sha256": None, "bytes": None, "truncated": False},
        "env": environment(),
        "redaction": {"policy": POLICY, "counts": {}},
        "compare": {"logic_key": logic_key(req.task, code_sha, params), "output_digest": None},
        "process": {"pid": os.getpid(), "hostname": socket.gethostname()},
        "integrity": {},
    }


@functools.cache
def environment() -> dict[str, Any]:
    packages = installed_versions(PACKAGES)
    return {"python": platform.python_version(), "platform": platform.platform(terse=True),
            "pyx_version": __version__, "packages": packages, "hostname": socket.gethostname()}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """{name: version} of the installed distributions among ``names``, as ``importlib.metadata`` finds them
    (first on ``sys.path``), read from the ``<name>-<version>.dist-info`` folder names: importing
    ``importlib.metadata`` and parsing nine METADATA files cost ~40 ms of a kernel's first task."""
    wanted = {_canonical(n): n for n in names}
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            items = os.listdir(entry or ".")
        except OSError:
            continue
        for item in items:
            if item.endswith(".dist-info"):
                dist, _, version = item[:-10].partition("-")
                name = wanted.get(_canonical(dist))
                if name is not None and name not in found and version:
                    found[name] = version
        if len(found) == len(wanted):
            break
    missing = [n for n in names if n not in found]
    if missing:  # an egg-info or otherwise unusual install: ask importlib.metadata
        from importlib import metadata

        for name in missing:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
    return {n: found[n] for n in names if n in found}


@contextlib.contextmanager
def capture(run: Run, live_out: Any, live_err: Any) -> Iterator[tuple[LogTee, LogTee]]:
    """Tee stdout/stderr (redacted) to the log and the live output; audit file access; scan the dir."""
    before = scan_dir(run.dir, run.run_id)
    own = [run.code_path, run.input_path, run.manifest_path, run.log_path]
    with open(run.log_path, "ab", buffering=0) as raw:
        log = io.BufferedWriter(raw)
        hint = f"{run.dir.name}/{run.log_path.name}" if run.dir.name else run.log_path.name  # dir is resolved
        batch = WriteBatch()  # one for both: stdout and stderr keep their order in the log
        out = LogTee(log, live_out, run.redactor, live_limit=LIVE_LIMIT, log_hint=hint, batch=batch)
        err = LogTee(log, live_err, run.redactor, live_limit=LIVE_LIMIT, log_hint=hint, batch=batch)
        audit = start_audit(map(str, own))
        try:
            yield out, err
        finally:
            stop_audit()
            for tee in (out, err):
                with contextlib.suppress(Exception):
                    tee.flush()
            log.flush()
            run.log_truncated = out.truncated_live or err.truncated_live
            run.audit_reads, run.audit_writes = audit.reads, audit.writes
            run.dir_changes = changed_files(before, scan_dir(run.dir, run.run_id))


def error_record(exc: BaseException, redactor: Redactor, *, with_traceback: bool = True) -> dict[str, Any]:
    tb = "".join(traceback.format_exception(exc)) if with_traceback else None
    return {"type": type(exc).__name__, "message": redactor.text(str(exc)),
            "traceback": redactor.text(tb) if tb else None}


def finalize(run: Run, outcome: Outcome) -> dict[str, Any]:
    """Hash outputs and log, compute the keys, seal and write the final manifest, append history."""
    m = run.record
    ended = manifest.utc_now()
    m["status"] = outcome.status
    m["error"] = outcome.error
    m["timing"]["ended_at"] = manifest.rfc3339(ended)
    m["timing"]["duration_ms"] = round((time.perf_counter() - run.t0) * 1000, 3)
    m["namespace"] = {"reads": outcome.reads, "writes": outcome.writes}
    m["targets"] = run.targets
    m["data_access"] = run.data_access
    m["files"] = collect_files(run)
    try:
        size, truncated = os.stat(run.log_path).st_size, run.log_truncated
    except FileNotFoundError:  # removed while the task ran: an empty log stands in
        atomic_write(run.log_path, b"")
        size, truncated = 0, False
    digest, size = sha256_file(run.log_path) if size else (EMPTY_SHA256, 0)
    m["log"].update(sha256=digest, bytes=size, truncated=truncated)
    m["redaction"]["counts"] = dict(sorted(run.redactor.counts.items()))
    m["compare"]["output_digest"] = output_digest(m["files"]["outputs"])
    manifest.seal(m, run.session.prev_manifest_sha256)
    manifest.write(run.manifest_path, m)
    manifest.note_finished(run.dir, run.manifest_path.name)
    run.session.prev_manifest_sha256 = m["integrity"]["manifest_sha256"]
    run.session.save_state()
    run.session.cell_run_ids.append(run.run_id)
    history.append_line(run.dir / history.HISTORY, {
        "run_id": run.run_id, "task": run.task, "topic": run.session.topic, "session_id": run.session.session_id,
        "status": outcome.status, "manifest": run.manifest_path.name, "started_at": m["timing"]["started_at"],
        "summary": one_line_summary(m),
    })
    return m


def one_line_summary(m: dict[str, Any]) -> str:
    outs = m["files"]["outputs"]
    text = f"{m['task']} {m['status']} in {m['timing']['duration_ms']:.0f} ms, {len(outs)} output(s)"
    if m["error"]:
        text += f": {m['error']['type']}: {m['error']['message'][:120]}"
    return text.replace("\n", " ")


_OWN = PYX_OWN_SUFFIXES


def _is_pyx_artifact(run: Run, rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if name.endswith(_OWN) or name.startswith("."):
        return True
    ids = RUN_ID_RE.findall(name)
    if ids and run.run_id not in ids:
        return True  # another run's evidence (a concurrent process in the same directory)
    return name.endswith(".py") and "/" not in rel and (run.dir / (name[:-3] + ".input.json")).exists()


def file_entry(run: Run, path: Path, role: str, captured_by: str) -> dict[str, Any] | None:
    try:
        digest, size = sha256_file(path)
    except OSError:
        return None
    media = mimetypes.guess_type(path.name)[0] or ("application/x-ndjson" if path.suffix == ".jsonl"
                                                   else "application/octet-stream")
    return {"path": relpath(run.dir, path), "sha256": digest, "bytes": size, "role": role,
            "media_type": media, "rows": count_rows(path, size), "captured_by": captured_by}


def count_rows(path: Path, size: int) -> int | None:
    """Data rows of a CSV (header excluded) or JSONL file, or items of a JSON list; None otherwise."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json") or size > (2 << 30):
        return None
    try:
        if suffix == ".json":
            if size > (64 << 20):
                return None
            data = json.loads(path.read_bytes())
            for key in ("rows", "items", "messages", "partitions"):
                if isinstance(data, dict) and isinstance(data.get(key), list):
                    return len(data[key])
            return len(data) if isinstance(data, list) else None
        lines = 0
        last = b"\n"
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        lines += last != b"\n"
        if suffix == ".csv":
            return max(lines - 1, 0)
        return lines
    except (OSError, ValueError):
        return None


def collect_files(run: Run) -> dict[str, list[dict[str, Any]]]:
    """Outputs (explicit, then audit, then dir_diff) and inputs of the run, hashed now."""
    outputs: dict[str, dict[str, Any]] = {}
    if not (run.explicit or run.audit_writes or run.dir_changes or run.audit_reads):
        return {"inputs": [], "outputs": []}  # most runs of a notebook: nothing to resolve or hash
    root = run.dir.resolve()

    def add(path: Path, role: str, how: str) -> None:
        key = str(path)
        if key in outputs or not path.is_file():
            return
        rel = relpath(root, path)
        if rel.startswith("../") or _is_pyx_artifact(run, rel) and how != "explicit":
            return
        entry = file_entry(run, path, role, how)
        if entry:
            outputs[key] = entry

    for p, role in run.explicit.items():
        add(Path(p), role, "explicit")
    for p in sorted(run.audit_writes):
        add(Path(p), role_for(Path(p).name), "audit")
    for rel in run.dir_changes:
        add(root / rel, role_for(rel.rsplit("/", 1)[-1]), "dir_diff")
    inputs = []
    cwd = Path.cwd().resolve()
    for p in sorted(run.audit_reads - run.audit_writes - set(outputs)):
        path = Path(p)
        # data files live in the investigation directory or the project (cwd); not in /usr, /etc, ...
        if not path.is_file() or not (path.is_relative_to(root) or path.is_relative_to(cwd)):
            continue
        rel = relpath(root, path)
        if not rel.startswith("../") and _is_pyx_artifact(run, rel) and not rel.endswith(".input.json"):
            continue
        entry = file_entry(run, path, "input", "audit")
        if entry:
            inputs.append(entry)
    return {"inputs": inputs, "outputs": list(outputs.values())}

