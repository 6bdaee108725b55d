"""Fingerprints: prove which PostgreSQL, Redis and Kafka were reached, as ``fingerprint.<system>.<run_id>.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyx_magics.context import to_json_bytes
from pyx_magics.core.errors import UsageProblem
from pyx_magics.core.hashing import atomic_write
from pyx_magics.datalayer.config import SYSTEMS, endpoints

TOPIC_SUBSET = 20
KEY_SAMPLE = 2000


def _postgres(ctx: Any) -> dict[str, Any]:
    return dict(ctx.db().fingerprint())


def _redis(ctx: Any) -> dict[str, Any]:
    r = ctx.redis()
    info: dict[str, Any] = {}
    for section in ("server", "replication", "keyspace"):
        info[section] = r.client.info(section)
    server, repl = info["server"], info["replication"]
    summary = r.keyspace_summary("*", sample=KEY_SAMPLE)
    return {
        "redis_version": server.get("redis_version") or server.get("valkey_version"),
        "server_name": server.get("server_name", "redis"),
        "run_id": server.get("run_id"), "tcp_port": server.get("tcp_port"),
        "role": repl.get("role"), "master_replid": repl.get("master_replid"),
        "connected_slaves": repl.get("connected_slaves"),
        "keyspace": info["keyspace"], "key_patterns": summary,
        "identity": r.identity, "endpoint": {"host": r.endpoint.host, "port": r.endpoint.port, "db": r.db},
    }


def _kafka(ctx: Any) -> dict[str, Any]:
    k = ctx.kafka()
    cluster = k.cluster()
    topics = k.topics(limit=TOPIC_SUBSET)
    return {**cluster, "topics": topics, "topics_shown": len(topics),
            "endpoint": {"host": k.endpoint.host, "port": k.endpoint.port}}


_BY_SYSTEM = {"postgres": _postgres, "redis": _redis, "kafka": _kafka}


def fingerprint(ctx: Any, system: str) -> dict[str, Any]:
    """Fingerprint one system through the task context ``ctx`` and write it as evidence."""
    if system not in _BY_SYSTEM:
        raise UsageProblem(f"unknown system {system!r}", hint="choose postgres, redis or kafka")
    run = ctx._run
    data = {"system": system, "environment_label": run.session.env_label, **_BY_SYSTEM[system](ctx)}
    path: Path = run.declare_output(f"fingerprint.{system}.{run.run_id}.json", "fingerprint")
    atomic_write(path, to_json_bytes(run.redactor.json(data)))
    return data


def configured_systems(environ: dict[str, str] | None = None) -> list[str]:
    found = endpoints(environ)
    return [s for s in SYSTEMS if s in found]


def task_source(system: str) -> str:
    """The code of a fingerprint task, as recorded in its manifest."""
    return f"fingerprint = pyx.fingerprint({system!r})\n"
