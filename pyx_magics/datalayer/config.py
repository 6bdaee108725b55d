"""Connection settings from env vars and ``.env`` files (read, never written). No driver imports."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from pyx_magics.core.errors import UsageProblem

SYSTEMS = ("postgres", "redis", "kafka")
CONTRACT_VARS = ("DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD",
                 "REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD",
                 "KAFKA_BROKERS", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "PYX_ENV", "PYX_DIR", "PYX_TOPIC")


def parse_dotenv(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` prefix, quotes and ``#`` comments allowed)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key.strip()] = value
    return out


def load_environ(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> dict[str, str]:
    """The process env over ``./.env`` over ``~/.config/pyx/.env`` (the real env always wins)."""
    merged: dict[str, str] = {}
    for path in (Path.home() / ".config" / "pyx" / ".env", (cwd or Path.cwd()) / ".env"):
        try:
            merged.update(parse_dotenv(path.read_text("utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    merged.update(os.environ if environ is None else environ)
    return merged


@dataclass(frozen=True)
class Endpoint:
    """Where one system is reached, and which variable said so."""

    system: str
    host: str
    port: int
    variable: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _port(value: str, var: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise UsageProblem(f"{var}={value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise UsageProblem(f"{var}={port} is not a port number (1-65535)")
    return port


def _from_url(system: str, var: str, url: str, default_port: int) -> Endpoint:
    try:
        parts = urlsplit(url)
        port = parts.port or default_port
    except ValueError as exc:
        raise UsageProblem(f"{var} is not a valid URL ({exc})") from None
    path = parts.path.lstrip("/")
    extra = tuple(parse_qsl(parts.query))  # e.g. sslmode=require, passed through to the driver
    return Endpoint(system, parts.hostname or "127.0.0.1", port, var,
                    unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password else None, path or None, extra)


def endpoints(environ: Mapping[str, str] | None = None) -> dict[str, list[Endpoint]]:
    """Configured endpoints per system (Kafka may list several brokers)."""
    env = load_environ() if environ is None else dict(environ)
    found: dict[str, list[Endpoint]] = {}
    if env.get("DATABASE_URL"):
        found["postgres"] = [_from_url("postgres", "DATABASE_URL", env["DATABASE_URL"], 5432)]
    elif env.get("DB_HOST") or env.get("DB_PORT"):
        found["postgres"] = [Endpoint("postgres", env.get("DB_HOST") or "127.0.0.1",
                                      _port(env.get("DB_PORT") or "5432", "DB_PORT"),
                                      "DB_PORT" if env.get("DB_PORT") else "DB_HOST",
                                      env.get("DB_USER"), env.get("DB_PASSWORD"), env.get("DB_NAME"))]
    if env.get("REDIS_URL"):
        found["redis"] = [_from_url("redis", "REDIS_URL", env["REDIS_URL"], 6379)]
    elif env.get("REDIS_HOST") or env.get("REDIS_PORT"):
        found["redis"] = [Endpoint("redis", env.get("REDIS_HOST") or "127.0.0.1",
                                   _port(env.get("REDIS_PORT") or "6379", "REDIS_PORT"),
                                   "REDIS_PORT" if env.get("REDIS_PORT") else "REDIS_HOST",
                                   None, env.get("REDIS_PASSWORD"), env.get("REDIS_DB") or "0")]
    if env.get("KAFKA_BROKERS"):
        brokers = []
        for item in env["KAFKA_BROKERS"].split(","):
            item = item.strip()
            if not item:
                continue
            host, sep, port = item.rpartition(":")
            if not sep:
                raise UsageProblem(f"KAFKA_BROKERS entry {item!r} must be host:port")
            brokers.append(Endpoint("kafka", host.strip("[]") or "127.0.0.1", _port(port, "KAFKA_BROKERS"),
                                    "KAFKA_BROKERS", env.get("KAFKA_SASL_USERNAME"), env.get("KAFKA_SASL_PASSWORD")))
        if brokers:
            found["kafka"] = brokers
    return found
