"""``pyx info`` / ``%pyx_env``: version, directory, env var names (values hidden), endpoints, listening ports."""

from __future__ import annotations

import os
import socket
from typing import Any

from pyx_magics import __version__
from pyx_magics.core.redact import is_secret_name
from pyx_magics.datalayer.config import CONTRACT_VARS, endpoints, load_environ


def port_listening(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when something accepts a TCP connection at host:port (a tunnel that is up)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def collect(check_ports: bool = True) -> dict[str, Any]:
    env = load_environ()
    names = sorted(k for k in env if k in CONTRACT_VARS or k.startswith("PYX_") or
                   (is_secret_name(k) and k.split("_")[0] in ("DB", "REDIS", "KAFKA", "DATABASE")))
    variables = {k: ("set, value hidden" if is_secret_name(k) or k.endswith("_URL") else "set") for k in names}
    eps: dict[str, list[dict[str, Any]]] = {}
    problem = None
    try:
        for system, items in endpoints(env).items():
            eps[system] = [{"host": e.host, "port": e.port, "variable": e.variable,
                            "listening": port_listening(e.host, e.port) if check_ports else None} for e in items]
    except Exception as exc:  # a malformed variable is reported, not raised
        problem = str(exc)
    return {"pyx_version": __version__, "environment_label": env.get("PYX_ENV", "local"),
            "dir": os.path.abspath(env.get("PYX_DIR", "temp")), "variables": variables,
            "endpoints": eps, "problem": problem}


def render(data: dict[str, Any]) -> str:
    lines = [f"pyx {data['pyx_version']} · environment {data['environment_label'].upper()} · dir {data['dir']}"]
    lines.append("variables: " + (", ".join(f"{k} ({v})" for k, v in data["variables"].items()) or "none set"))
    if not data["endpoints"]:
        lines.append("endpoints: none configured (set DATABASE_URL/DB_*, REDIS_URL/REDIS_*, KAFKA_BROKERS)")
    for system, items in sorted(data["endpoints"].items()):
        for e in items:
            state = {True: "listening", False: "NOTHING LISTENING - is the tunnel up?", None: "not checked"}
            lines.append(f"  {system:<8} {e['host']}:{e['port']}  from {e['variable']}  {state[e['listening']]}")
    if data.get("problem"):
        lines.append(f"problem: {data['problem']}")
    return "\n".join(lines)
