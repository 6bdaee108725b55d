"""One investigation model from a notebook, the session journal and the manifests.

Everything the exporters show comes from here: the steps (one per recorded run, in the
session's order, plus the task cells papermill never reached), the notes (``%pyx_note``
records and markdown cells under the report's headings), each note linked to the step(s)
that prove it, and the papermill parameters. Pure: nbformat only, no IPython, no papermill.
"""

from __future__ import annotations

import ast
import bisect
import copy
import json
import os
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyx_magics.core.errors import UsageProblem
from pyx_magics.core.hashing import sha256_file
from pyx_magics.core.history import HISTORY, read_lines
from pyx_magics.core.manifest import MANIFEST_SUFFIX
from pyx_magics.core.names import inside
from pyx_magics.core.redact import MASK, Redactor, is_secret_key
from pyx_magics.core.runid import RUN_ID_RE
from pyx_magics.journal import NOTE_KINDS, journal_path
from pyx_magics.journal import read as read_journal
from pyx_magics.report.md import slug

MANIFEST_NAME_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,99}\." + RUN_ID_RE.pattern + r")\.manifest\.json")
RUN_REF_RE = re.compile(r"\brun (" + RUN_ID_RE.pattern + r")")
PAPERMILL_ERROR_TAG = "papermill-error-cell-tag"

#: Report sections fed by notes and markdown headings: key -> (title, heading aliases)
SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "problem": ("Problem statement", ("problem statement", "problem", "issue", "observed behavior",
                                      "observed behaviour", "what was reported")),
    "expected": ("Expected behavior", ("expected behavior", "expected behaviour", "expected")),
    "scope": ("Scope", ("scope",)),
    "impact": ("Impact", ("impact",)),
    "hypothesis": ("Hypotheses", ("hypotheses", "hypothesis")),
    "finding": ("Findings", ("findings", "finding")),
    "root_cause": ("Root cause", ("root cause", "root-cause", "cause")),
    "fix": ("Mitigation / Fix", ("mitigation / fix", "mitigation/fix", "mitigation and fix", "mitigation & fix",
                                 "mitigation", "fix", "workaround", "resolution")),
    "prevention": ("Prevention", ("prevention", "follow-ups", "follow ups", "action items")),
    "action": ("Actions", ("actions", "action plan", "next steps")),
    "status": ("Status", ("status",)),
}
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


# ---------------------------------------------------------------- the model


@dataclass
class Step:
    """One task of the investigation: a recorded run, or a task cell that never ran."""

    number: int
    task: str
    manifest: dict[str, Any] | None = None
    manifest_path: Path | None = None
    cell_index: int | None = None
    pending: str | None = None  # why a task cell of the notebook has no run

    @property
    def anchor(self) -> str:
        return f"step-{self.number}-{slug(self.task)}"

    @property
    def title(self) -> str:
        return f"Step {self.number}: {self.task}"

    @property
    def run_id(self) -> str | None:
        return self.manifest["run_id"] if self.manifest else None

    @property
    def status(self) -> str:
        return str(self.manifest["status"]) if self.manifest else "not run"

    @property
    def started_at(self) -> str:
        return str(self.manifest["timing"].get("started_at") or "") if self.manifest else ""

    @property
    def execution_count(self) -> int | None:
        if not self.manifest:
            return None
        ec = (self.manifest.get("code") or {}).get("execution_count")
        return ec if isinstance(ec, int) else None


@dataclass
class Note:
    """A claim of the investigator: a ``%pyx_note`` or a markdown block under a report heading."""

    kind: str
    text: str
    source: str = "journal"  # "journal" or "markdown"
    at: str | None = None
    execution_count: int | None = None
    owner: str | None = None
    due: str | None = None
    cell_index: int | None = None
    steps: list[Step] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)  # task names named by ``evidence=`` in the note


@dataclass
class Parameter:
    name: str
    value: str  # display form, already masked when the name looks secret
    source: str  # "injected" (papermill) or "default" (the parameters cell)


@dataclass
class Investigation:
    """Everything known about one session, read back from the files pyx wrote."""

    dir: Path
    topic: str
    session_id: str
    env_label: str
    redactor: Redactor
    notebook_path: Path | None = None
    nb: Any = None  # a private copy of the notebook (nbformat.NotebookNode) or None
    steps: list[Step] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    sections: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # key -> [(markdown, cell index)]
    parameters: list[Parameter] = field(default_factory=list)
    executed_by: str = "interactive"  # "papermill" or "interactive" or "cli"
    problems: list[str] = field(default_factory=list)
    _hashes: dict[Path, tuple[str, int] | None] = field(default_factory=dict)

    @property
    def base_name(self) -> str:
        return f"{self.topic}.{self.session_id}"

    def report_path(self, out_dir: Path, kind: str) -> Path:
        """``<topic>.<session_id>.<kind>`` in ``out_dir`` (kind: inspect.md, summary.md, learn, template.ipynb)."""
        return out_dir / f"{self.base_name}.{kind}"

    def notes_of(self, *kinds: str) -> list[Note]:
        return [n for n in self.notes if n.kind in kinds]

    def run_steps(self) -> list[Step]:
        return [s for s in self.steps if s.manifest is not None]

    def artifact(self, rel: str) -> Path | None:
        """The file a manifest names (relative to the investigation directory); None if it would escape it."""
        if rel and "/" not in rel and rel not in (".", ".."):  # the usual case, without resolving
            path = self.dir / rel
            if not path.is_symlink():
                return path
        try:
            return inside(self.dir, rel)
        except UsageProblem:
            return None

    def file_hash(self, path: Path) -> tuple[str, int] | None:
        """(sha256, bytes) of ``path`` now, or None when missing (cached for the export)."""
        if path not in self._hashes:
            try:
                self._hashes[path] = sha256_file(path)
            except OSError:
                self._hashes[path] = None
        return self._hashes[path]


# ---------------------------------------------------------------- loading


def load_source(source: str | os.PathLike[str], directory: str | os.PathLike[str] | None = None) -> Investigation:
    """A notebook, an investigation directory, an inspect log, a journal or a manifest → the model."""
    path = Path(source)
    if path.is_dir():
        return load_session(path)
    if not path.exists():
        raise UsageProblem(f"{os.fspath(path)!r} does not exist",
                           hint="give a notebook, an investigation directory or a <topic>.<session>.inspect.md")
    if path.suffix == ".ipynb":
        return load_notebook(path, directory)
    name = path.name
    m = re.fullmatch(r"(.+)\.(" + RUN_ID_RE.pattern + r")\.(?:inspect\.md|summary\.md|journal\.jsonl)", name)
    if m:
        return load_session(directory or path.parent, m.group(1), m.group(2))
    if name.endswith(MANIFEST_SUFFIX):
        data = _read_json(path)
        if data and data.get("session_id"):
            return load_session(directory or path.parent, data.get("topic"), data["session_id"])
    raise UsageProblem(f"cannot tell which investigation {os.fspath(path)!r} belongs to",
                       hint="give a notebook (.ipynb), a directory, or a <topic>.<session>.inspect.md file")


def load_notebook(path: str | os.PathLike[str] | None, directory: str | os.PathLike[str] | None = None,
                  nb: Any = None, *, copy_nb: bool = True) -> Investigation:
    """The investigation a notebook recorded. ``nb`` (if given) is copied, never changed."""
    import nbformat

    nb_path = Path(path).resolve() if path else None
    if nb is None:
        if nb_path is None:
            raise UsageProblem("no notebook given")
        try:
            nb = nbformat.read(os.fspath(nb_path), as_version=4)
        except (OSError, ValueError) as exc:
            raise UsageProblem(f"cannot read notebook {os.fspath(nb_path)!r}: {exc}") from None
    elif copy_nb:
        nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if PAPERMILL_ERROR_TAG not in (c.get("metadata", {}).get("tags") or [])]
    refs = _cell_refs(nb.cells)
    meta = nb.metadata.get("pyx") if isinstance(nb.metadata.get("pyx"), dict) else {}
    folder = nb_path.parent if nb_path else Path.cwd()
    all_names = [name for names in refs.values() for name in names]
    root = _find_dir(folder, directory, meta, all_names)
    manifests = {name: m for name in dict.fromkeys(all_names) if (m := _read_json(root / name))}
    sid = meta.get("session_id") if isinstance(meta.get("session_id"), str) else None
    topic = meta.get("topic") if isinstance(meta.get("topic"), str) else None
    if manifests:
        counts = Counter(m.get("session_id") for m in manifests.values())
        sid = sid if sid in counts else max(counts, key=lambda s: (counts[s], str(s)))
        topic = next(str(m["topic"]) for m in manifests.values() if m.get("session_id") == sid)
    inv = load_session(root, topic, sid, extra=list(manifests), link=False)
    inv.notebook_path = nb_path
    inv.nb = nb
    inv.executed_by = "papermill" if isinstance(nb.metadata.get("papermill"), dict) else "interactive"
    _attach_cells(inv, nb.cells, refs)
    inv.parameters = _parameters(nb, inv.redactor)
    _markdown_sections(inv, nb.cells)
    _number_and_link(inv)
    return inv


def load_session(directory: str | os.PathLike[str], topic: str | None = None, session_id: str | None = None,
                 *, extra: list[str] | None = None, link: bool = True) -> Investigation:
    """An investigation from its directory alone (the latest session when none is named)."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise UsageProblem(f"investigation directory {os.fspath(root)!r} does not exist", hint="pass --dir DIR")
    history = list(read_lines(root / HISTORY))
    if session_id is None:
        session_id, topic = _latest_session(root, history, topic)
    names = [h["manifest"] for h in history if h.get("session_id") == session_id and isinstance(h.get("manifest"), str)]
    names += extra or []
    if not names:  # no history (copied folder?): look at every manifest
        names = [p.name for p in sorted(root.glob("*" + MANIFEST_SUFFIX))]
    manifests: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        if "/" in name or name in manifests:
            continue
        m = _read_json(root / name)
        if m and m.get("session_id") == session_id and isinstance(m.get("run_id"), str):
            manifests[name] = m
    if topic is None:
        topic = next((str(m["topic"]) for m in manifests.values()), None)
    if topic is None:
        raise UsageProblem(f"no record of session {session_id} in {os.fspath(root)}")
    ordered = sorted(manifests.items(), key=lambda kv: (int(kv[1].get("sequence") or 0), kv[1]["run_id"]))
    env = next((str(m.get("environment_label")) for _, m in reversed(ordered)), "unknown")
    inv = Investigation(root, topic, str(session_id), env, Redactor.from_env())
    inv.executed_by = "cli"
    inv.steps = [Step(0, str(m["task"]), m, root / name) for name, m in ordered]
    for rec in read_journal(journal_path(root, topic, str(session_id))):
        if rec.get("kind") == "note" and rec.get("note") in NOTE_KINDS and isinstance(rec.get("text"), str):
            ec = rec.get("execution_count")
            ev = rec.get("evidence")
            inv.notes.append(Note(str(rec["note"]), rec["text"], "journal", _str(rec.get("at")),
                                  ec if isinstance(ec, int) else None, _str(rec.get("owner")), _str(rec.get("due")),
                                  evidence=[str(t) for t in ev] if isinstance(ev, list) else []))
    if link:
        _number_and_link(inv)
    return inv


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _output_texts(cell: Any) -> list[str]:
    texts: list[str] = []
    for out in cell.get("outputs") or []:
        kind = out.get("output_type")
        if kind == "stream":
            texts.append(_joined(out.get("text")))
        elif kind in ("display_data", "execute_result"):
            data = out.get("data") or {}
            texts += [_joined(data[k]) for k in ("text/plain", "text/html") if k in data]
        elif kind == "error":
            texts.append(str(out.get("evalue") or ""))
    return texts


def _joined(v: Any) -> str:
    return "".join(v) if isinstance(v, list) else str(v or "")


def _cell_refs(cells: list[Any]) -> dict[int, list[str]]:
    """Manifest names each code cell's outputs mention (the task summary prints them)."""
    refs: dict[int, list[str]] = {}
    for i, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        names: list[str] = []
        for text in _output_texts(cell):
            if ".manifest.json" in text:
                names += [m.group(0) for m in MANIFEST_NAME_RE.finditer(text)]
        if names:
            refs[i] = list(dict.fromkeys(names))
    return refs


def _find_dir(folder: Path, directory: Any, meta: dict[str, Any], names: list[str]) -> Path:
    """The investigation directory: ``--dir``, ``metadata.pyx.dir``, ``PYX_DIR``, ``temp`` (notebook's folder, then cwd)."""
    if directory:
        return Path(directory).resolve()
    cands: list[Path] = []
    if isinstance(meta.get("dir"), str):
        cands.append(folder / meta["dir"])
    env_dir = os.environ.get("PYX_DIR")
    if env_dir:
        cands += [Path(env_dir)] if os.path.isabs(env_dir) else [folder / env_dir, Path.cwd() / env_dir]
    cands += [folder / "temp", Path.cwd() / "temp", folder, Path.cwd()]
    cands = [c.resolve() for c in cands if c.is_dir()]
    for c in cands:
        if any((c / n).is_file() for n in names[:50]):
            return c
    sid = meta.get("session_id")
    for c in cands:
        if (c / HISTORY).is_file() or any(c.glob(f"*.{sid}.journal.jsonl" if sid else "*.journal.jsonl")):
            return c
    looked = ", ".join(os.fspath(c) for c in cands) or "nowhere"
    raise UsageProblem(f"cannot find the investigation directory of this notebook (looked in {looked})",
                       hint="pass --dir DIR (the folder holding the manifests and .history.jsonl)")


def _latest_session(root: Path, history: list[dict[str, Any]], topic: str | None) -> tuple[str, str | None]:
    for h in reversed(history):
        if isinstance(h.get("session_id"), str) and (topic is None or h.get("topic") == topic):
            return h["session_id"], _str(h.get("topic"))
    journals = sorted(root.glob("*.journal.jsonl"), key=lambda p: p.stat().st_mtime)
    for p in reversed(journals):
        m = re.fullmatch(r"(.+)\.(" + RUN_ID_RE.pattern + r")\.journal\.jsonl", p.name)
        if m and (topic is None or m.group(1) == topic):
            return m.group(2), m.group(1)
    raise UsageProblem(f"no pyx session found in {os.fspath(root)}",
                       hint="run a task first, or pass the directory that holds .history.jsonl")


# ---------------------------------------------------------------- notebook cells


def task_of_cell(source: str) -> tuple[str, list[str]] | None:
    """(task, options) of a ``%%pyx_run TASK ...`` cell, else None."""
    first = source.lstrip().split("\n", 1)[0]
    if not first.startswith("%%pyx_run"):
        return None
    try:
        words = shlex.split(first[len("%%pyx_run"):])
    except ValueError:
        words = first[len("%%pyx_run"):].split()
    if not words or words[0].startswith("-"):
        return None
    return words[0], words[1:]


def _attach_cells(inv: Investigation, cells: list[Any], refs: dict[int, list[str]]) -> None:
    by_run = {s.run_id: s for s in inv.steps}
    for i, names in refs.items():
        for name in names:
            rid = RUN_ID_RE.search(name)
            step = by_run.get(rid.group(0)) if rid else None
            if step is not None and step.cell_index is None:
                step.cell_index = i
    # cells whose summary was not saved: match by execution count recorded in the manifest
    by_ec: dict[int, list[int]] = {}
    for i, cell in enumerate(cells):
        if cell.get("cell_type") == "code" and isinstance(cell.get("execution_count"), int):
            by_ec.setdefault(cell["execution_count"], []).append(i)
    for step in inv.steps:
        if step.cell_index is None and step.execution_count in by_ec and len(by_ec[step.execution_count]) == 1:
            cell = cells[by_ec[step.execution_count][0]]
            parsed = task_of_cell(_joined(cell.get("source")))
            if parsed and parsed[0] == step.task:
                step.cell_index = by_ec[step.execution_count][0]
    attached = {s.cell_index for s in inv.steps if s.cell_index is not None}
    for i, cell in enumerate(cells):
        if cell.get("cell_type") != "code" or i in attached:
            continue
        parsed = task_of_cell(_joined(cell.get("source")))
        if not parsed:
            continue
        pm = (cell.get("metadata") or {}).get("papermill") or {}
        if pm.get("status") == "pending" or (inv.executed_by == "papermill" and cell.get("execution_count") is None):
            why = "papermill stopped before this cell"
        elif cell.get("execution_count") is None:
            why = "the cell was not executed"
        else:
            why = "ran, but its evidence was not found (output cleared or another directory)"
        inv.steps.append(Step(0, parsed[0], None, None, i, why))


def _parameters(nb: Any, red: Redactor) -> list[Parameter]:
    """Effective papermill parameters: the ``parameters`` cell's defaults overridden by the injected ones."""
    values: dict[str, tuple[Any, str]] = {}
    pm = nb.metadata.get("papermill") if isinstance(nb.metadata.get("papermill"), dict) else {}
    for tag, source in (("parameters", "default"), ("injected-parameters", "injected")):
        for cell in nb.cells:
            if tag in ((cell.get("metadata") or {}).get("tags") or []):
                values.update({k: (v, source) for k, v in _assignments(_joined(cell.get("source"))).items()})
    for k, v in (pm.get("parameters") or {}).items():
        values[str(k)] = (v, "injected")
    out = []
    for name, (value, source) in values.items():
        if _secret_param(name):
            if isinstance(value, str) and value:
                red.add_secret(value)  # mask it wherever else the notebook shows it
            shown = MASK
        else:
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        out.append(Parameter(name, shown, source))
    return out


def _secret_param(name: str) -> bool:
    """Parameter names are judged by whole words, like JSON keys (``cache_key_pattern`` is not a secret)."""
    return is_secret_key(name)


def _assignments(source: str) -> dict[str, Any]:
    """``name = literal`` assignments of a parameters cell (other statements shown as their source)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) != 1 or not isinstance(targets[0], ast.Name) or node.value is None:
                continue
            try:
                out[targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, SyntaxError, TypeError):
                out[targets[0].id] = ast.get_source_segment(source, node.value) or "…"
    return out


def section_of(heading: str) -> str | None:
    """The report section a markdown heading belongs to, if any."""
    h = re.sub(r"[*_`:]+", "", heading).strip().lower()
    best: tuple[int, str] | None = None
    for key, (_, aliases) in SECTIONS.items():
        for a in aliases:
            if (h == a or (h.startswith(a) and not h[len(a)].isalnum())) and (best is None or len(a) > best[0]):
                best = (len(a), key)
    return best[1] if best else None


def _markdown_sections(inv: Investigation, cells: list[Any]) -> None:
    """Markdown under a report heading (until the next heading of its level, or a code cell) feeds that section."""
    current: str | None = None
    level = 0
    buf: list[str] = []
    where = 0

    def flush() -> None:
        text = "\n".join(buf).strip()
        if current and text:
            inv.sections.setdefault(current, []).append((text, where))
            inv.notes.append(Note(current, text, "markdown", cell_index=where))
        buf.clear()

    for i, cell in enumerate(cells):
        if cell.get("cell_type") != "markdown":
            if cell.get("cell_type") == "code":
                flush()
                current = None
            continue
        in_fence = False
        for line in _joined(cell.get("source")).split("\n"):
            if _FENCE.match(line):
                in_fence = not in_fence
            m = None if in_fence else _HEADING.match(line)
            if m and not (current and len(m.group(1)) > level):
                flush()
                key = section_of(m.group(2))
                current, level, where = key, len(m.group(1)), i
                continue
            if current:
                if not buf:
                    where = i
                buf.append(line)
        flush()  # one note per cell and section
    flush()


# ---------------------------------------------------------------- numbering and evidence links


def _number_and_link(inv: Investigation) -> None:
    for n, step in enumerate(inv.steps, 1):
        step.number = n
    runs = sorted(inv.run_steps(), key=lambda s: (s.started_at, s.number))
    starts = [s.started_at for s in runs]
    ecs = [s.execution_count for s in runs]
    for note in inv.notes:
        if note.source == "markdown":
            note.steps = _steps_for_markdown(inv, note)
        else:
            note.steps = _steps_for_note(runs, starts, ecs, note)


def _steps_for_note(runs: list[Step], starts: list[str], ecs: list[int | None], note: Note) -> list[Step]:
    """The tasks the note names (``evidence=``), else the task(s) run in the note's cell, else in the
    last cell that ran a task before it."""
    end = bisect.bisect_left(starts, _rfc(note.at)) if note.at else len(runs)  # runs started before the note
    if end == 0:
        return []
    if note.evidence:  # the latest run of each named task before the note
        latest = {runs[i].task: runs[i] for i in range(end) if runs[i].task in note.evidence}
        return sorted(latest.values(), key=lambda s: s.number)
    n = note.execution_count
    if n is not None:
        same = [runs[i] for i in range(end) if ecs[i] == n]
        if same:
            return same
        last = next((i for i in range(end - 1, -1, -1) if (ecs[i] or 0) < n and ecs[i] is not None), None)
        if last is not None:
            first = last
            while first > 0 and ecs[first - 1] == ecs[last]:
                first -= 1
            return runs[first:last + 1]
    return [runs[end - 1]]


def _rfc(at: str) -> str:
    """A note time (``2026-01-01T00:00:00.000+00:00``) in the manifests' sortable form (``...Z``)."""
    return at.replace("+00:00", "Z")


def _steps_for_markdown(inv: Investigation, note: Note) -> list[Step]:
    if note.cell_index is None:
        return []
    before = [s for s in inv.run_steps() if s.cell_index is not None and s.cell_index < note.cell_index]
    if not before:
        return []
    last = max(s.cell_index for s in before if s.cell_index is not None)
    return [s for s in before if s.cell_index == last]
