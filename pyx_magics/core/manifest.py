"""Build, write atomically, read, validate and verify manifests (``pyx.manifest/1``)."""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from pyx_magics.core.errors import EvidenceError
from pyx_magics.core.hashing import atomic_write, pretty_json, sha256_bytes, sha256_file, sha256_json
from pyx_magics.core.names import inside

SCHEMA = "pyx.manifest/1"
STATUSES = ("running", "succeeded", "failed", "interrupted", "timed_out", "refused")
FINAL_STATUSES = STATUSES[1:]
MANIFEST_SUFFIX = ".manifest.json"


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
    import jsonschema  # a dependency of nbformat; imported lazily to keep ``import core`` cheap

    return jsonschema.Draft202012Validator(json_schema())


def schema_errors(manifest: Any) -> list[str]:
    """Human-readable schema violations of ``manifest`` (empty when valid)."""
    errors = sorted(_validator().iter_errors(manifest), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


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


def write(path: Path, manifest: dict[str, Any]) -> None:
    """Write a manifest atomically (temp file + rename)."""
    atomic_write(path, pretty_json(manifest))


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
    proc = manifest.get("process") or {}
    if proc.get("hostname") != os.uname().nodename or not isinstance(proc.get("pid"), int):
        return False
    return not _pid_alive(proc["pid"])


def verify_manifest(path: Path, report: VerifyReport) -> None:
    """Re-hash every artifact of one manifest, adding problems to ``report``."""
    report.checked += 1
    name = path.name
    try:
        m = read(path)
    except EvidenceError as exc:
        report.problems.append(Problem(name, str(exc)))
        return
    if not integrity_ok(m):
        report.problems.append(Problem(name, "manifest content does not match its integrity hash (edited?)"))
    root = path.parent
    if sha256_bytes(m["code"]["source"].encode("utf-8")) != m["code"]["sha256"]:
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
        except Exception:
            report.problems.append(Problem(name, f"{kind} {rel}: path leaves the investigation directory"))
            continue
        if not target.is_file():
            report.problems.append(Problem(name, f"{kind} {rel}: missing"))
            continue
        digest, size = sha256_file(target)
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
    """Verify manifests (files or directories of them)."""
    report = VerifyReport()
    for path in find_manifests(paths):
        verify_manifest(path, report)
    return report


def mark_interrupted(path: Path, reason: str) -> bool:
    """Turn a stale ``running`` manifest into ``interrupted`` (re-sealed); True if it changed."""
    m = read(path)
    if not is_stale_running(m):
        return False
    m["status"] = "interrupted"
    m["error"] = {"type": "Interrupted", "message": reason, "traceback": None}
    m["timing"]["ended_at"] = rfc3339(utc_now())
    seal(m, m["integrity"].get("prev_manifest_sha256"))
    write(path, m)
    return True
