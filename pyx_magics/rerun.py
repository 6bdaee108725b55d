"""Papermill re-execution on the pyx kernel (every recorded parameter + overrides) and batch runs.

``rerun`` reads a notebook, works out every parameter its last run used, runs papermill with
the ``pyx`` kernel under a new session (pinned through ``PYX_SESSION_ID`` in the kernel's
environment), writes the output notebook with parameters and secrets redacted, and compares
the original session's manifests with the re-run's (:mod:`pyx_magics.core.compare`).

``run_batch`` runs one job per parameter row in a process pool or on a Dask cluster.
:func:`execute` is the job function for both: module level and picklable arguments.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pyx_magics.core import compare, manifest
from pyx_magics.core.errors import ConnectionProblem, EvidenceError, UsageProblem
from pyx_magics.core.hashing import atomic_write
from pyx_magics.core.history import HISTORY, read_lines
from pyx_magics.core.names import check_name, inside
from pyx_magics.core.redact import MASK, Redactor, is_secret_key
from pyx_magics.core.runid import RUN_ID_RE, new_run_id
from pyx_magics.replay import session_state_kept, write_result

KERNEL = "pyx"
SESSION_ENV = "PYX_SESSION_ID"  #: the kernel's runs join this (new) session
SECRET_ENV = "PYX_RERUN_SECRET_"  #: secret parameter values, so the kernel's own redactor masks them
STARTUP_ATTEMPTS = 3  #: kernel start-ups tried per job
SCHEME = "pyx-redacted://"  #: papermill output paths under this scheme are written redacted
DASK_HINT = "install the optional extra: pip install 'pyx-magics[dask]'"


# ---------------------------------------------------------------- parameters


def parse_value(text: str) -> Any:
    """A ``-p`` value: a Python literal when it parses as one (``5``, ``True``, ``[1, 2]``), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def read_notebook(path: str | os.PathLike[str]) -> Any:
    import nbformat

    try:
        return nbformat.read(os.fspath(path), as_version=4)
    except FileNotFoundError:
        raise UsageProblem(f"notebook {os.fspath(path)!r} not found") from None
    except Exception as exc:  # nbformat raises several unrelated types for a broken file
        raise UsageProblem(f"{os.fspath(path)!r} is not a readable notebook ({type(exc).__name__})") from None


def parameters_cell(nb: Any) -> tuple[dict[str, Any], set[str]]:
    """(literal defaults, every assigned name) of the first ``parameters``-tagged cell."""
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in (cell.metadata.get("tags") or []):
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:
                return {}, set()
            defaults: dict[str, Any] = {}
            names: set[str] = set()
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else [])
                for target in targets:
                    if isinstance(target, ast.Name):
                        names.add(target.id)
                        with contextlib.suppress(ValueError, SyntaxError, TypeError):
                            defaults[target.id] = ast.literal_eval(node.value)
            return defaults, names
    return {}, set()


@dataclass
class Recorded:
    """The parameters of a notebook's last run and the names it accepts."""

    values: dict[str, Any]
    known: set[str]
    source: str  # "papermill" or "parameters cell"
    redacted: set[str] = field(default_factory=set)


def recorded_parameters(nb: Any) -> Recorded:
    """From ``metadata.papermill.parameters`` if the notebook ran under papermill, else the
    ``parameters`` cell defaults. Values redacted by an earlier pyx re-run are dropped (the
    notebook's default applies) and listed in ``redacted``."""
    defaults, names = parameters_cell(nb)
    pm = (nb.metadata.get("papermill") or {}).get("parameters")
    if isinstance(pm, Mapping):
        values, source = dict(pm), "papermill"
    else:
        values, source = defaults, "parameters cell"
    redacted = {k for k, v in values.items() if v == MASK}
    return Recorded({k: v for k, v in values.items() if k not in redacted}, names | set(values), source, redacted)


def load_params_file(path: str) -> dict[str, Any]:
    """``-f PARAMS.{yaml,yml,json}``: an object of parameter values."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageProblem(f"-f {path}: cannot read ({type(exc).__name__})") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise UsageProblem(f"-f {path}: expected a .yaml, .yml or .json file")
    except UsageProblem:
        raise
    except Exception as exc:
        raise UsageProblem(f"-f {path}: not valid {p.suffix[1:].upper()} ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise UsageProblem(f"-f {path}: expected an object of parameter names to values")
    return data


def load_batch(path: str) -> list[dict[str, Any]]:
    """``--batch PARAMS.{csv,jsonl}``: one parameter dict per row. CSV cells are parsed like ``-p``
    values; an empty CSV cell keeps the recorded value."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageProblem(f"--batch {path}: cannot read ({type(exc).__name__})") from None
    rows: list[dict[str, Any]] = []
    if p.suffix.lower() == ".csv":
        for row in csv.DictReader(text.splitlines()):
            if None in row:
                raise UsageProblem(f"--batch {path}: row {len(rows) + 1} has more cells than the header")
            rows.append({k: parse_value(v) for k, v in row.items() if v not in ("", None)})
    elif p.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise UsageProblem(f"--batch {path}: line {n} is not JSON") from None
            if not isinstance(obj, dict):
                raise UsageProblem(f"--batch {path}: line {n} is not an object")
            rows.append(obj)
    else:
        raise UsageProblem(f"--batch {path}: expected a .csv or .jsonl file")
    if not rows:
        raise UsageProblem(f"--batch {path}: no rows")
    return rows


def check_known(names: Iterable[str], known: set[str], notebook: str) -> None:
    unknown = sorted(set(names) - known)
    if unknown:
        raise UsageProblem(f"unknown parameter(s) {', '.join(unknown)} for {notebook}",
                           hint="known: " + (", ".join(sorted(known)) or "none (no parameters cell)"))


def secrets_of(params: Mapping[str, Any]) -> list[str]:
    """Values of parameters whose name looks secret (``db_password``, ``api_token``...)."""
    return [str(v) for k, v in params.items() if is_secret_key(k) and v not in (None, "") and str(v) != MASK]


# ---------------------------------------------------------------- sessions and manifests


def history(root: Path) -> list[dict[str, Any]]:
    return list(read_lines(root / HISTORY))


def _read(root: Path, name: str) -> dict[str, Any] | None:
    try:
        return manifest.read(inside(root, name))
    except (EvidenceError, UsageProblem):
        return None


def session_manifests(root: Path, session_id: str, run_ids: Iterable[str] | None = None,
                      lines: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Manifests of ``session_id`` in ``root`` (only ``run_ids`` if given), ordered by sequence.

    ``.history.jsonl`` names finished runs; manifests with no history line yet (a run still
    going, or a kernel that died mid-task) are found by their file name's run id."""
    lines = history(root) if lines is None else lines
    wanted = set(run_ids) if run_ids is not None else None
    names = {ln["run_id"]: ln["manifest"] for ln in lines
             if ln.get("session_id") == session_id and isinstance(ln.get("manifest"), str)}
    listed = {ln.get("run_id") for ln in lines}
    for path in root.glob(f"*{manifest.MANIFEST_SUFFIX}"):
        ids = RUN_ID_RE.findall(path.name)
        if ids and ids[-1] >= session_id and ids[-1] not in listed:
            names.setdefault(ids[-1], path.name)
    found = []
    for run_id, name in names.items():
        if wanted is not None and run_id not in wanted:
            continue
        m = _read(root, name)
        if m is not None and m.get("session_id") == session_id:
            found.append(m)
    return sorted(found, key=lambda m: (m["sequence"], m["run_id"]))


def output_text(nb: Any) -> str:
    """Every string a notebook shows in its outputs (where pyx prints run ids)."""
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            for key in ("text", "evalue", "traceback"):
                val = out.get(key)
                parts.extend(val if isinstance(val, list) else [val] if isinstance(val, str) else [])
            for val in (out.get("data") or {}).values():
                parts.extend(val if isinstance(val, list) else [val] if isinstance(val, str) else [])
    return "\n".join(parts)


@dataclass
class SideRuns:
    """The runs one side of a comparison stands for."""

    label: str
    root: Path
    session_id: str | None
    manifests: list[dict[str, Any]]
    how: str


def notebook_runs(nb: Any, root: Path, label: str, topic: str | None = None,
                  lines: list[dict[str, Any]] | None = None) -> SideRuns:
    """The runs a notebook stands for: those whose run ids its outputs show (the last execution
    of each cell: the most direct evidence), else its pyx session (``metadata.pyx.session_id``),
    else the latest session of ``topic`` in the directory's history."""
    lines = history(root) if lines is None else lines
    by_run = {ln.get("run_id"): ln for ln in lines}
    sessions = {ln.get("session_id") for ln in lines}
    meta = (nb.metadata.get("pyx") or {}).get("session_id")
    shown = RUN_ID_RE.findall(output_text(nb))
    votes: Counter[str] = Counter()
    for rid in shown:
        if rid in by_run:
            votes[str(by_run[rid].get("session_id"))] += 1
        elif rid in sessions:
            votes[rid] += 1
    session, how = None, ""
    if votes:
        session = max(votes, key=lambda s: (votes[s], s))
        how = "run ids in its outputs"
    elif isinstance(meta, str) and RUN_ID_RE.fullmatch(meta):
        session, how = meta, "notebook metadata"
    if session is None and topic:
        of_topic = [str(ln["session_id"]) for ln in lines if ln.get("topic") == topic and ln.get("session_id")]
        if of_topic:
            session, how = max(of_topic), f"latest session of topic {topic}"
    if session is None:
        return SideRuns(label, root, None, [], "no pyx session found")
    ids = [rid for rid in shown if by_run.get(rid, {}).get("session_id") == session]
    runs = session_manifests(root, session, ids or None, lines)
    if ids:
        how = "the runs its outputs show"
    return SideRuns(label, root, session, runs, how)


def resolve_side(ref: str, root: Path, label: str) -> SideRuns:
    """A compare argument: a manifest file, a notebook or a session id (in ``root``)."""
    p = Path(ref)
    if ref.endswith(manifest.MANIFEST_SUFFIX):
        if not p.is_file():
            raise UsageProblem(f"{label}: manifest {ref!r} not found")
        m = manifest.read(p)
        return SideRuns(label, p.resolve().parent, m["session_id"], [m], "manifest")
    if ref.endswith(".ipynb"):
        nb = read_notebook(p)
        side = notebook_runs(nb, root, label, topic=recorded_parameters(nb).values.get("topic"))
        if side.session_id is None:
            raise UsageProblem(f"{label}: no pyx runs of {ref} found in {root}", hint="pass --dir")
        return side
    if RUN_ID_RE.fullmatch(ref):
        runs = session_manifests(root, ref)
        if not runs:
            raise UsageProblem(f"{label}: session {ref} has no manifests in {root}", hint="pass --dir")
        return SideRuns(label, root, ref, runs, "session id")
    raise UsageProblem(f"{label}: {ref!r} is not a session id, a notebook (.ipynb) or a manifest (.manifest.json)")


def opener_for(*sides: SideRuns) -> compare.Opener:
    """Open an artifact of a manifest from the directory its side lives in."""
    roots = {id(m): s.root for s in sides for m in s.manifests}

    def opener(m: Any, rel: str) -> IO[bytes]:
        return open(inside(roots.get(id(m), sides[0].root), rel), "rb")

    return opener


def compare_sides(a: SideRuns, b: SideRuns, title: str | None = None,
                  extra: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], Path, Path]:
    """Compare, then write ``<topic>.<B session>.compare.{json,md}`` into B's directory."""
    result = compare.compare_sessions(a.manifests, b.manifests, opener_for(a, b))
    for key, side in (("a", a), ("b", b)):
        result[key]["found_by"] = side.how
        result[key]["session_id"] = side.session_id or result[key]["session_id"]
    result.update(extra or {})
    json_path, md_path = write_result(b.root, result, title or "pyx compare")
    return result, json_path, md_path


def print_result(result: Mapping[str, Any], out: Callable[[str], Any] = print) -> None:
    for t in result["tasks"]:
        out(f"  {t['verdict']:<13} {t['task']}#{t['occurrence']}")
        if t["verdict"] != "reproduced":
            for reason in t["reasons"]:
                out(f"      {reason}")
    verdict = "reproduced" if result["reproduced"] else "NOT reproduced"
    counts = ", ".join(f"{v} {n}" for v, n in result["counts"].items() if n)
    out(f"{verdict}: {counts or 'no tasks on either side'}")


# ---------------------------------------------------------------- one papermill job


@dataclass
class Job:
    """One papermill execution (picklable: it travels to pool and Dask workers)."""

    notebook: str
    output: str
    parameters: dict[str, Any]
    directory: str
    session_id: str
    cwd: str
    topic: str
    kernel_name: str = KERNEL
    timeout: float | None = None
    progress_bar: bool = True
    row: int | None = None
    rerun_of: str | None = None


@dataclass
class JobResult:
    row: int | None
    status: str  # succeeded | failed
    output: str
    session_id: str
    duration_s: float
    error: str | None = None


def kernel_env(job: Job) -> dict[str, str]:
    env = {SESSION_ENV: job.session_id, "PYX_DIR": job.directory}
    for i, value in enumerate(secrets_of(job.parameters)):
        env[f"{SECRET_ENV}{i}"] = value
    return env


def kernel_manager_class(env: Mapping[str, str]) -> type:
    """An AsyncKernelManager that starts the kernel with ``env`` added, without touching ``os.environ``
    (so jobs on threads of one Dask worker do not see each other's session)."""
    from jupyter_client.manager import AsyncKernelManager

    extra = dict(env)

    class PyxRerunKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
            kw["env"] = {**(kw.get("env") or os.environ), **extra}
            await super().start_kernel(**kw)

    return PyxRerunKernelManager


# papermill changes the process's cwd and nbclient's sync wrappers share an event loop, so jobs on
# threads of one process (a threaded Dask worker) run one at a time; processes give the parallelism.
_one_at_a_time = threading.Lock()
_writers: dict[str, tuple[Redactor, Job]] = {}
_writers_lock = threading.Lock()
_registered = False


class RedactingWriter:
    """A papermill I/O handler: writes the notebook redacted (parameters, secrets) and atomically.

    Papermill writes parameters, secrets included, into the injected cell and
    ``metadata.papermill.parameters``; with this handler no unredacted copy reaches disk."""

    def read(self, path: str) -> str:
        return Path(path[len(SCHEME):]).read_text("utf-8")

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path[len(SCHEME):])

    def pretty_path(self, path: str) -> str:
        return path[len(SCHEME):]

    def write(self, buf: str, path: str) -> None:
        real = path[len(SCHEME):]
        with _writers_lock:
            red, job = _writers[real]
        atomic_write(real, redact_notebook(buf, red, job).encode("utf-8"))


def register_writer(job: Job, red: Redactor) -> str:
    global _registered
    from papermill.iorw import papermill_io

    with _writers_lock:
        if not _registered:
            papermill_io.register(SCHEME, RedactingWriter())
            _registered = True
        _writers[job.output] = (red, job)
    return SCHEME + job.output


def redact_notebook(buf: str, red: Redactor, job: Job) -> str:
    """The notebook text with secret-named parameters masked (metadata and injected cell) and
    every secret value masked everywhere; stamps ``metadata.pyx`` with the re-run's session."""
    import nbformat
    from papermill.translators import translate_parameters

    nb = nbformat.reads(buf, as_version=4)
    meta = nb.metadata.setdefault("papermill", {})
    params = dict(meta.get("parameters") or {})
    masked = {k: (MASK if is_secret_key(k) and v not in (None, "") else v) for k, v in params.items()}
    meta["parameters"] = masked
    meta["output_path"] = job.output
    language = (nb.metadata.get("kernelspec") or {}).get("language") or "python"
    for cell in nb.cells:
        if "injected-parameters" in (cell.metadata.get("tags") or []):
            cell.source = translate_parameters(job.kernel_name, language, masked, "Parameters")
    nb.metadata["pyx"] = {"session_id": job.session_id, "topic": job.topic, "rerun_of": job.rerun_of,
                          "directory": job.directory}

    def walk(obj: Any) -> Any:
        if isinstance(obj, str):
            return red.text(obj)
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return str(nbformat.writes(nbformat.from_dict(walk(nb))))


def execute(job: Job) -> JobResult:
    """Run one papermill job on the pyx kernel; never raises (a failure is a ``failed`` result)."""
    t0 = time.perf_counter()
    red = Redactor.from_env(extra=secrets_of(job.parameters))
    status, error = "succeeded", None
    try:
        import papermill as pm
        from papermill.exceptions import PapermillExecutionError

        target = register_writer(job, red)
        try:
            for attempt in range(1, STARTUP_ATTEMPTS + 1):
                try:
                    with _one_at_a_time:
                        pm.execute_notebook(
                            job.notebook, target, parameters=job.parameters, kernel_name=job.kernel_name,
                            request_save_on_cell_execute=False, progress_bar=job.progress_bar, cwd=job.cwd,
                            execution_timeout=job.timeout,
                            kernel_manager_class=kernel_manager_class(kernel_env(job)),
                        )
                    break
                except RuntimeError as exc:
                    # the kernel died before its first reply (e.g. a port taken by another process between
                    # being chosen and bound): no cell ran yet, so starting again is safe
                    if "before replying to kernel_info" not in str(exc) or attempt == STARTUP_ATTEMPTS:
                        raise
        except PapermillExecutionError as exc:
            what = f": {first_line(exc.evalue)}" if str(exc.evalue or "").strip() else ""
            status, error = "failed", f"cell [{exc.exec_count}] {first_line(exc.source)[:60]!r}: {exc.ename}{what}"
        finally:
            with _writers_lock:
                _writers.pop(job.output, None)
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {first_line(str(exc))}"
    return JobResult(job.row, status, job.output, job.session_id, round(time.perf_counter() - t0, 3),
                     red.text(error) if error else None)


def first_line(text: Any) -> str:
    return str(text or "").strip().split("\n", 1)[0][:300]


# ---------------------------------------------------------------- rerun


@dataclass
class Plan:
    """Everything a re-run of one notebook needs, worked out before anything runs."""

    notebook: Path
    nb: Any
    recorded: Recorded
    base: dict[str, Any]  # recorded values + -f + -p
    directory: Path
    cwd: Path
    defaults: dict[str, Any] = field(default_factory=dict)  # the parameters cell's literal defaults
    topic: str | None = None  # the original runs' topic, once known


def plan(notebook: str, overrides: Mapping[str, Any], *, directory: str | None = None,
         cwd: str | None = None) -> Plan:
    """Read the notebook and merge its recorded parameters with ``overrides`` (unknown names refused)."""
    path = Path(notebook).resolve()
    nb = read_notebook(path)
    rec = recorded_parameters(nb)
    check_known(overrides, rec.known, notebook)
    base = {**rec.values, **overrides}
    workdir = Path(cwd).resolve() if cwd else path.parent
    root = Path(directory or os.environ.get("PYX_DIR") or workdir / "temp")
    root = (root if root.is_absolute() else Path.cwd() / root).resolve()
    if root.exists() and not root.is_dir():
        raise UsageProblem(f"--dir {root} is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    return Plan(path, nb, rec, base, root, workdir, parameters_cell(nb)[0])


def topic_for(params: Mapping[str, Any], *fallbacks: str | None) -> str:
    """The topic the kernel will record under (the magics prefer ``PYX_TOPIC``, then the notebook's ``topic``)."""
    for candidate in (os.environ.get("PYX_TOPIC"), params.get("topic"), *fallbacks):
        if isinstance(candidate, str):
            with contextlib.suppress(UsageProblem):
                return check_name(candidate, "topic")
    return "investigation"


def make_job(p: Plan, params: dict[str, Any], *, output: str | None, timeout: float | None,
             progress_bar: bool, row: int | None = None, rerun_of: str | None = None,
             kernel_name: str = KERNEL) -> Job:
    session = new_run_id()
    topic = topic_for({**p.defaults, **params}, p.topic, p.notebook.stem.replace(" ", "_"))
    if output and row is None:
        out = Path(output).resolve()
    else:
        folder = Path(output).resolve() if output else p.directory
        out = folder / f"{topic}.{session}.rerun.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    return Job(str(p.notebook), str(out), params, str(p.directory), session, str(p.cwd), topic,
               kernel_name, timeout, progress_bar, row, rerun_of)


def rerun_runs(job: Job, root: Path, history_before: int) -> SideRuns:
    """The re-run's manifests: its pinned session, or (a kernel that ignores ``PYX_SESSION_ID``)
    the history lines it added whose run ids its output notebook shows."""
    lines = history(root)
    runs = session_manifests(root, job.session_id, lines=lines)
    if runs:
        return SideRuns("B", root, job.session_id, runs, "re-run session")
    added = lines[history_before:]
    shown: set[str] = set()
    with contextlib.suppress(UsageProblem):
        shown = set(RUN_ID_RE.findall(output_text(read_notebook(job.output))))
    picked = [ln for ln in added if ln.get("run_id") in shown] or [ln for ln in added if ln.get("topic") == job.topic]
    found = [m for ln in picked if (m := _read(root, str(ln.get("manifest")))) is not None]
    found.sort(key=lambda m: (m["session_id"], m["sequence"]))
    session = found[-1]["session_id"] if found else None
    return SideRuns("B", root, session, found, f"history lines added by the re-run (the kernel ignored {SESSION_ENV})")


def restamp(path: Path, session_id: str) -> None:
    """Correct ``metadata.pyx.session_id`` of an output notebook to the session its runs joined."""
    import nbformat

    with contextlib.suppress(OSError, UsageProblem):
        nb = read_notebook(path)
        nb.metadata.setdefault("pyx", {})["session_id"] = session_id
        atomic_write(path, nbformat.writes(nb).encode("utf-8"))


@dataclass
class RerunOutcome:
    job: JobResult
    result: dict[str, Any]
    json_path: Path
    md_path: Path
    original: SideRuns
    rerun: SideRuns

    @property
    def exit_code(self) -> int:
        return 0 if self.job.status == "succeeded" and compare.exit_code(self.result) == 0 else 1


def rerun(notebook: str, overrides: Mapping[str, Any], *, directory: str | None = None, output: str | None = None,
          cwd: str | None = None, timeout: float | None = None, progress_bar: bool = True,
          kernel_name: str = KERNEL, warn: Callable[[str], Any] | None = None) -> RerunOutcome:
    """Re-run ``notebook`` with every recorded parameter plus ``overrides`` and compare with the original."""
    p = plan(notebook, overrides, directory=directory, cwd=cwd)
    for name in sorted(p.recorded.redacted - set(overrides)):
        if warn:
            warn(f"{name} was redacted in {p.notebook.name}; the notebook's default applies "
                 f"(pass -p {name} VALUE to set it)")
    lines = history(p.directory)
    topic = os.environ.get("PYX_TOPIC") or {**p.defaults, **p.recorded.values}.get("topic")
    original = notebook_runs(p.nb, p.directory, "A", topic=topic if isinstance(topic, str) else None, lines=lines)
    p.topic = next((str(m["topic"]) for m in original.manifests), None)
    if warn and original.session_id is None:
        warn(f"no earlier pyx runs of {p.notebook.name} in {p.directory}: every task will be `new`")
    job = make_job(p, dict(p.base), output=output, timeout=timeout, progress_bar=progress_bar,
                   rerun_of=original.session_id, kernel_name=kernel_name)
    with session_state_kept(p.directory, [job.topic], {job.session_id}):
        result = execute(job)
    b = rerun_runs(job, p.directory, len(lines))
    if b.session_id and b.session_id != job.session_id:
        restamp(Path(job.output), b.session_id)
    extra = {"rerun": {"notebook": str(p.notebook), "output": job.output, "status": result.status,
                       "error": result.error, "duration_s": result.duration_s,
                       "parameters_from": p.recorded.source, "overrides": sorted(overrides)}}
    cmp, json_path, md_path = compare_sides(original, b, f"pyx rerun {p.notebook.name}", extra)
    return RerunOutcome(result, cmp, json_path, md_path, original, b)


# ---------------------------------------------------------------- batch


def run_batch(notebook: str, rows: Sequence[Mapping[str, Any]], overrides: Mapping[str, Any], *,
              directory: str | None = None, output: str | None = None, cwd: str | None = None,
              timeout: float | None = None, workers: int | None = None, executor: str = "pool",
              scheduler: str | None = None, progress: bool = True, kernel_name: str = KERNEL) -> list[JobResult]:
    """One papermill job per row (recorded parameters < ``overrides`` < the row); a failing row
    does not stop the others. Results are in row order."""
    p = plan(notebook, overrides, directory=directory, cwd=cwd)
    for n, row in enumerate(rows, 1):
        try:
            check_known(row, p.recorded.known, notebook)
        except UsageProblem as exc:
            raise UsageProblem(f"batch row {n}: {exc.message}", hint=exc.hint) from None
    jobs = [make_job(p, {**p.base, **row}, output=output, timeout=timeout, progress_bar=False, row=n,
                     kernel_name=kernel_name) for n, row in enumerate(rows, 1)]
    if executor == "dask" and not scheduler:
        raise UsageProblem("--executor dask needs --scheduler ADDRESS (e.g. tcp://127.0.0.1:8786)")
    if executor not in ("pool", "dask"):
        raise UsageProblem(f"unknown executor {executor!r}", hint="use pool or dask")
    with session_state_kept(p.directory, {j.topic for j in jobs}, {j.session_id for j in jobs}):
        results = _run_dask(jobs, str(scheduler), progress) if executor == "dask" else _run_pool(jobs, workers, progress)
    return sorted(results, key=lambda r: r.row or 0)


def _bar(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="pyx rerun", unit="job", disable=not progress)


def _failed(job: Job, exc: BaseException) -> JobResult:
    return JobResult(job.row, "failed", job.output, job.session_id, 0.0, f"{type(exc).__name__}: {first_line(exc)}")


def _run_pool(jobs: list[Job], workers: int | None, progress: bool) -> list[JobResult]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if workers is not None and workers < 1:
        raise UsageProblem(f"--workers must be at least 1, got {workers}")
    results = []
    # spawn: a fresh interpreter per worker, no inherited threads or sockets from this process
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers or min(len(jobs), os.cpu_count() or 1), mp_context=ctx) as pool, \
            _bar(len(jobs), progress) as bar:
        futures = {pool.submit(execute, job): job for job in jobs}
        for fut in as_completed(futures):
            try:
                results.append(fut.result())
            except Exception as exc:  # a worker died (BrokenProcessPool): only its row fails
                results.append(_failed(futures[fut], exc))
            bar.update(1)
    return results


def _run_dask(jobs: list[Job], scheduler: str, progress: bool) -> list[JobResult]:
    try:
        import distributed
    except ImportError:
        raise UsageProblem("--executor dask needs dask.distributed", hint=DASK_HINT) from None
    try:
        client = distributed.Client(scheduler, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ConnectionProblem(f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__})",
                                hint="start one with `dask scheduler` or check the address") from None
    results = []
    with client, _bar(len(jobs), progress) as bar:
        futures = client.map(execute, jobs, pure=False)
        by_key = {f.key: job for f, job in zip(futures, jobs, strict=True)}
        for fut in distributed.as_completed(futures, loop=client.loop):
            try:
                results.append(fut.result())
            except Exception as exc:
                results.append(_failed(by_key[fut.key], exc))
            bar.update(1)
    return results


def summary_table(results: Sequence[JobResult]) -> str:
    """row, status, output notebook, duration, error: one line each."""
    header = ("row", "status", "output", "duration_s", "error")
    body = [(str(r.row), r.status, r.output, f"{r.duration_s:.1f}", r.error or "") for r in results]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return "\n".join(fmt.format(*row).rstrip() for row in [header, *body])
