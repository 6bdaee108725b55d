"""Wrong-environment guard: systems confirmed under a label may not be reached under another.

``pyx env confirm LABEL`` records each system's identity in ``<dir>/.env-confirmations.json``.
A task whose session declares a different label is refused (status ``refused``) when it reaches a
confirmed system: before its body runs when the endpoint matches, and at connect time when the
server identity matches.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pyx_magics.core.errors import WrongEnvironment
from pyx_magics.core.hashing import atomic_write, pretty_json

CONFIRMATIONS = ".env-confirmations.json"
_confirming: ContextVar[bool] = ContextVar("pyx_confirming", default=False)


@contextlib.contextmanager
def confirming() -> Iterator[None]:
    """While ``pyx env confirm`` fingerprints systems to (re)label them, the guard stands aside."""
    token = _confirming.set(True)
    try:
        yield
    finally:
        _confirming.reset(token)


def identity_key_of(target: dict[str, Any]) -> str | None:
    """The identity the guard compares, from a manifest ``targets`` entry."""
    ident = target.get("identity") or {}
    return (target.get("identity_key") or ident.get("system_identifier") or ident.get("cluster_id")
            or ident.get("run_id") or ident.get("master_replid") or None)


def load(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / CONFIRMATIONS).read_text("utf-8"))
    except (OSError, ValueError):
        return {"systems": []}
    return data if isinstance(data, dict) and isinstance(data.get("systems"), list) else {"systems": []}


def record(root: Path, label: str, system: str, endpoint: dict[str, Any], identity_key: str,
           fingerprint_file: str | None) -> None:
    """Remember that ``system`` (identified by ``identity_key``) is environment ``label``."""
    data = load(root)
    data["systems"] = [s for s in data["systems"]
                       if not (s.get("system") == system and s.get("identity_key") == identity_key)]
    data["systems"].append({"system": system, "label": label, "endpoint": endpoint,
                            "identity_key": identity_key, "fingerprint": fingerprint_file})
    atomic_write(root / CONFIRMATIONS, pretty_json(data))


def _refuse(system: str, where: str, confirmed: str, declared: str) -> WrongEnvironment:
    return WrongEnvironment(
        f"refused: {system} at {where} was confirmed as environment {confirmed!r} "
        f"but this session declares {declared!r}",
        hint=f"run `%pyx_topic TOPIC --env {confirmed}` if that is intended, or check your tunnels",
    )


def check_endpoint(root: Path, declared: str, system: str, host: str, port: int) -> None:
    """Before a task body runs: refuse if this endpoint was confirmed under another label."""
    if _confirming.get():
        return
    for s in load(root)["systems"]:
        ep = s.get("endpoint") or {}
        if s.get("system") == system and ep.get("host") == host and ep.get("port") == port \
                and s.get("label") != declared:
            raise _refuse(system, f"{host}:{port}", s["label"], declared)


_CALLS = {
    "postgres": re.compile(r"\bpyx\.db\(|fingerprint\(\s*['\"]postgres"),
    "redis": re.compile(r"\bpyx\.redis\(|fingerprint\(\s*['\"]redis"),
    "kafka": re.compile(r"\bpyx\.kafka\(|fingerprint\(\s*['\"]kafka"),
}


def systems_referenced(source: str) -> list[str]:
    """The data systems a task's code reaches through its ``pyx`` context."""
    return [system for system, pattern in _CALLS.items() if pattern.search(source)]


def preflight(root: Path, declared: str, source: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a task before its body runs when it will reach an endpoint confirmed under another label."""
    if not (root / CONFIRMATIONS).exists():
        return
    systems = systems_referenced(source)
    if not systems:
        return
    from pyx_magics.datalayer.config import endpoints

    configured = endpoints(environ)
    for system in systems:
        for ep in configured.get(system, []):
            check_endpoint(root, declared, system, ep.host, ep.port)


def check_identity(root: Path, declared: str, system: str, identity_key: str, where: str) -> None:
    """At connect time: refuse if this server identity was confirmed under another label."""
    if _confirming.get():
        return
    for s in load(root)["systems"]:
        if s.get("system") == system and s.get("identity_key") == identity_key and s.get("label") != declared:
            raise _refuse(system, where, s["label"], declared)
