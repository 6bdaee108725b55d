"""Build, write atomically, read, validate and verify manifests (``pyx.manifest/1``)."""

from __future__ import annotations

import copy
import fcntl
import functools
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from pyx_magics.core.errors import EvidenceError, UsageProblem
from pyx_magics.core.hashing import atomic_write, layout_json, sha256_bytes, sha256_file, sha256_json
from pyx_magics.core.names import inside

SCHEMA = "pyx.manifest/1"
STATUSES = ("running", "succeeded", "failed", "interrupted", "timed_out", "refused")
MANIFEST_SUFFIX = ".manifest.json"
RUNNING = ".running"  #: per directory: ``+name`` when a run starts, ``-name`` when its manifest is final
_LISTED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.manifest\.json")


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(t: datetime) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-12-04T01:30:01.123Z``."""
    t = t.astimezone(UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


@functools.cache
def json_schema() -> dict[str, Any]:
    """The manifest JSON Schema shipped with the package."""
    text = resources.files("pyx_magics.core").joinpath("manifest.schema.json").read_text("utf-8")
    return dict(json.loads(text))


@functools.cache
def _validator() -> Any:
    # fastjsonschema (a dependency of nbformat) compiles the schema to Python in ~20 ms; jsonschema's
    # import alone costs ~2 s where rfc3987-syntax is installed, in every process that reads a manifest
    import fastjsonschema

    return fastjsonschema.compile(json_schema())


def schema_errors(manifest: Any) -> list[str]:
    """Human-readable schema violations of ``manifest`` (empty when valid; the first one found)."""
    import fastjsonschema

    try:
        _validator()(manifest)
    except fastjsonschema.JsonSchemaValueException as exc:
        where = ".".join(str(p) for p in (exc.path or [])[1:]) or "<root>"
        return [f"{where}: {exc.message}"]
    return []


def validate(manifest: Any) -> dict[str, Any]:
    problems = schema_errors(manifest)
    if problems:
        raise EvidenceError("manifest does not match pyx.manifest/1: " + "; ".join(problems[:5]))
    return dict(manifest)


def seal(manifest: dict[str, Any], prev_sha256: str | None) -> dict[str, Any]:
    """Set ``integrity``: a hash of the canonical manifest (prev pointer included, own hash excluded)."""
    manifest["integrity"] = {"prev_manifest_sha256": prev_sha256}
    digest = sha256_json(manifest)
    manifest["integrity"] = {"manifest_sha256": digest, "prev_manifest_sha256": prev_sha256}
    return manifest


def integrity_ok(manifest: dict[str, Any]) -> bool:
    integ = manifest.get("integrity")
    if not isinstance(integ, dict) or "manifest_sha256" not in integ:
        return False
    probe = copy.copy(manifest)
    probe["integrity"] = {"prev_manifest_sha256": integ.get("prev_manifest_sha256")}
    try:
        return sha256_json(probe) == integ["manifest_sha256"]
    except (TypeError, ValueError):
        return False


def write(path: Path, manifest: dict[str, Any], *, new: bool = False) -> None:
    """Write a manifest atomically (temp file + rename); ``new``: the name surely does not exist yet."""
    atomic_write(path, layout_json(manifest), exists=False if new else None)


def read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and schema-check a manifest; any problem is an EvidenceError, never another exception."""
    try:
        with open(path, "rb") as f:
            raw = f.read(64 << 20)
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise EvidenceError(f"{os.fspath(path)}: manifest not found") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EvidenceError(f"{os.fspath(path)}: unreadable manifest ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise EvidenceError(f"{os.fspath(path)}: a manifest must be a JSON object")
    try:
        problems = schema_errors(data)
    except RecursionError:
        problems = ["nested too deeply"]
    if problems:
        raise EvidenceError(f"{os.fspath(path)}: invalid manifest: " + "; ".join(problems[:3]))
    return data


def manifest_name(task: str, run_id: str) -> str:
    return f"{task}.{run_id}{MANIFEST_SUFFIX}"


@dataclass
class Problem:
    """One verification finding; ``fatal`` problems make ``pyx verify`` exit 1."""

    manifest: str
    message: str
    fatal: bool = True


@dataclass
class VerifyReport:
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.fatal for p in self.problems)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_running(manifest: dict[str, Any]) -> bool:
    """A ``running`` manifest whose process (on this host) is gone: it was interrupted."""
    if manifest.get("status") != "running":
        return False
    proc = manifest.get("process")
    if not isinstance(proc, dict) or proc.get("hostname") != os.uname().nodename or not isinstance(proc.get("pid"), int):
        return False
    return not _pid_alive(proc["pid"])


def verify_manifest(path: Path, report: VerifyReport) -> None:
    """Re-hash every artifact of one manifest, adding problems to ``report``.

    A ``running`` manifest whose process is gone (killed, crashed) is marked ``interrupted``
    first (a non-fatal note), unless its content fails the integrity check.
    """
    report.checked += 1
    name = path.name
    try:
        m = read(path)
    except EvidenceError as exc:
        report.problems.append(Problem(name, str(exc)))
        return
    if m["status"] == "running" and is_stale_running(m):
        try:
            if mark_interrupted(path):
                m = read(path)
                report.problems.append(Problem(name, "interrupted: process gone (marked interrupted now; the "
                                                     "log holds what was printed before)", fatal=False))
        except (OSError, EvidenceError):  # e.g. a read-only copy of the evidence: report it as found
            pass
    if not integrity_ok(m):
        report.problems.append(Problem(name, "manifest content does not match its integrity hash (edited?)"))
    if name.endswith(MANIFEST_SUFFIX) and name != manifest_name(m["task"], m["run_id"]):
        report.problems.append(Problem(name, f"file name does not match its task and run id "
                                             f"({manifest_name(m['task'], m['run_id'])}): renamed or swapped?"))
    root = path.parent
    source = m["code"]["source"].encode("utf-8", "surrogatepass")
    if sha256_bytes(source) != m["code"]["sha256"]:
        report.problems.append(Problem(name, "recorded code does not match its sha256"))
    if m["status"] == "running":
        why = "its process is gone" if is_stale_running(m) else "it may still be running"
        report.problems.append(Problem(name, f"status is running: {why}; artifacts not final", fatal=False))
        return
    entries: list[tuple[str, dict[str, Any]]] = [("output", f) for f in m["files"]["outputs"]]
    log = m["log"]
    if log.get("sha256"):
        entries.append(("log", {"path": log["path"], "sha256": log["sha256"], "bytes": log["bytes"]}))
    for kind, entry in entries:
        rel = entry["path"]
        try:
            target = inside(root, rel)
            if not target.is_file():
                report.problems.append(Problem(name, f"{kind} {rel}: missing"))
                continue
            digest, size = sha256_file(target)
        except UsageProblem:
            report.problems.append(Problem(name, f"{kind} {rel}: path leaves the investigation directory"))
            continue
        except (OSError, ValueError) as exc:  # unreadable, or a path the OS cannot represent
            report.problems.append(Problem(name, f"{kind} {rel}: cannot be read ({type(exc).__name__})"))
            continue
        if digest != entry["sha256"] or size != entry["bytes"]:
            report.problems.append(Problem(name, f"{kind} {rel}: changed (sha256 or size differs)"))


def find_manifests(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(p.glob(f"*{MANIFEST_SUFFIX}")))
        else:
            found.append(p)
    return found


def verify(paths: Iterable[str | os.PathLike[str]]) -> VerifyReport:
    """Verify manifests (files or directories of them), then the chain linking each session's runs."""
    report = VerifyReport()
    found = find_manifests(paths)
    for path in found:
        verify_manifest(path, report)
    verify_chains(found, report)
    return report


def _integrity(path: Path) -> tuple[str | None, str | None, str | None]:
    """(session_id, manifest_sha256, prev_manifest_sha256) read without the schema check, or Nones."""
    try:
        with open(path, "rb") as f:
            m = json.loads(f.read(64 << 20))
        integ = m.get("integrity") or {}
        values = (m.get("session_id"), integ.get("manifest_sha256"), integ.get("prev_manifest_sha256"))
    except (OSError, ValueError, AttributeError, RecursionError):
        return None, None, None
    sid, sha, prev = (v if isinstance(v, str) else None for v in values)
    return sid, sha, prev


def verify_chains(paths: list[Path], report: VerifyReport) -> None:
    """Each manifest's ``prev_manifest_sha256`` must be the hash of a manifest of its session in its
    directory: a deleted run, or an earlier manifest edited and re-sealed, breaks the chain."""
    folders = {p.parent for p in paths}
    known: dict[tuple[Path, str], set[str]] = {}
    for folder in folders:
        for other in folder.glob(f"*{MANIFEST_SUFFIX}"):
            sid, sha, _ = _integrity(other)
            if sid and sha:
                known.setdefault((folder, sid), set()).add(sha)
    for path in paths:
        sid, _, prev = _integrity(path)
        if sid and prev and prev not in known.get((path.parent, sid), set()):
            report.problems.append(Problem(path.name, "chain broken: the previous manifest of this session "
                                                      "is missing or was changed after this run"))


def mark_interrupted(path: Path, reason: str | None = None) -> bool:
    """Turn a stale ``running`` manifest into ``interrupted`` (log hashed as it is, re-sealed).

    True if it changed. A manifest that fails its integrity check is left alone: re-sealing it
    would launder an edit.
    """
    m = read(path)
    if not is_stale_running(m) or not integrity_ok(m):
        return False
    proc = m["process"]
    m["status"] = "interrupted"
    m["error"] = {"type": "Interrupted", "traceback": None, "message": reason or (
        f"process gone: pid {proc['pid']} on {proc['hostname']} ended while the task was running "
        "(killed or crashed); the log holds what was printed before")}
    m["timing"]["ended_at"] = rfc3339(utc_now())
    log = m["log"]
    try:
        log["sha256"], log["bytes"] = sha256_file(inside(path.parent, log["path"]))
    except (OSError, ValueError):  # no log yet, or a path outside the directory
        pass
    seal(m, m["integrity"].get("prev_manifest_sha256"))
    write(path, m)
    return True


# ---------------------------------------------------------------- the list of open runs
#
# A run killed with SIGKILL never writes its final manifest nor its history line, and a
# directory may hold thousands of manifests: reading them all at every session start is too
# slow. So each run appends ``+<manifest name>`` to ``.running`` right after its first manifest
# write and ``-<manifest name>`` after its last; a session start reads only the names still
# open (the file is compacted each time), marks those whose process is gone and keeps the
# live ones. A run killed between the two writes of a pair is still found by ``pyx verify``.


def _append_locked(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)  # one short O_APPEND write: whole, at the end
    finally:
        os.close(fd)  # releases the lock


def note_started(root: Path, name: str) -> None:
    """Record that the run of manifest ``name`` (a file in ``root``) started."""
    _append_locked(root / RUNNING, f"+{name}\n".encode())


def note_finished(root: Path, name: str) -> None:
    """Record that the manifest ``name`` is final."""
    _append_locked(root / RUNNING, f"-{name}\n".encode())


def recover_interrupted(root: Path) -> list[str]:
    """Mark ``interrupted`` the open runs of ``root`` whose process is gone; names marked.

    Cost is proportional to the runs still open, not to the manifests in the directory.
    Never raises for a damaged list or manifest: ``pyx verify`` reports those.
    """
    try:
        fd = os.open(root / RUNNING, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:  # no list yet (or not a regular file): nothing to recover
        return []
    marked: list[str] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        open_runs: dict[str, None] = {}
        for line in data.decode("utf-8", "replace").splitlines():
            sign, name = line[:1], line[1:]
            if not _LISTED_NAME.fullmatch(name) or ".." in name:
                continue
            if sign == "+":
                open_runs[name] = None
            elif sign == "-":
                open_runs.pop(name, None)
        keep = []
        for name in open_runs:
            try:  # a plain parse: the schema check only for stale runs
                with open(root / name, "rb") as f:
                    m = json.loads(f.read(64 << 20))
                if not isinstance(m, dict) or m.get("status") != "running":
                    continue  # final (its process died after the last write), marked by verify, or damaged
                if is_stale_running(m):
                    if mark_interrupted(root / name):
                        marked.append(name)
                    continue  # marked, or tampered: verify reports it
            except (EvidenceError, OSError, ValueError, RecursionError):
                continue  # deleted or damaged: verify's job
            keep.append(name)
        compacted = "".join(f"+{n}\n" for n in keep).encode()
        if compacted != data:
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, compacted)
            os.ftruncate(fd, len(compacted))
    finally:
        os.close(fd)
    return marked
