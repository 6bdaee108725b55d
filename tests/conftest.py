"""Shared fixtures.

Local servers (see ``pyx_magics.services``): one PostgreSQL/Redis/Kafka set per test
session (per xdist worker), with per-test isolation helpers:

- ``services``: the started :class:`~pyx_magics.services.LocalServices` (session scope).
- ``service_env``: the contract env vars (``DATABASE_URL``, ``REDIS_URL``, ``KAFKA_BROKERS``, ...)
  set with monkeypatch; returns them as a dict.
- ``pg_db``: URL of a fresh, uniquely named database, dropped afterwards.
- ``redis_db``: URL of Redis db index 1, flushed before and after the test.
- ``kafka_topic``: a factory of unique names (topics, consumer groups): ``kafka_topic("orders")``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from pyx_magics.services import LocalServices

REDIS_TEST_DB = 1  # db 0 is what REDIS_URL points at; tests that flush use this one


@pytest.fixture(scope="session")
def services() -> Iterator[LocalServices]:
    """Local PostgreSQL, Redis and Kafka servers, started once per session."""
    with LocalServices() as svc:
        yield svc


@pytest.fixture
def service_env(services: LocalServices, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Export the contract env vars of ``services`` for this test."""
    env = services.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def pg_db(services: LocalServices) -> Iterator[str]:
    """A URL (with password) of a new empty database, dropped after the test."""
    import psycopg

    url = services.services["postgres"].url
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    yield f"{url.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


@pytest.fixture
def redis_db(services: LocalServices) -> Iterator[str]:
    """A URL of Redis db index ``REDIS_TEST_DB``, FLUSHDB'd before and after the test."""
    import redis

    url = f"{services.services['redis'].url.rsplit('/', 1)[0]}/{REDIS_TEST_DB}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    yield url
    with redis.Redis.from_url(url) as client:
        client.flushdb()


@pytest.fixture
def kafka_topic() -> Callable[[str], str]:
    """A factory of unique Kafka topic (or group) names: ``kafka_topic("prefix")``."""

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture(scope="session")
def pyx_kernel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Env vars to add so kernel name ``pyx`` resolves (KernelManager, papermill, ``jupyter``).

    The kernelspec is installed once into a temporary prefix (never the user's Jupyter dirs);
    ``JUPYTER_PATH`` points at it and ``JUPYTER_RUNTIME_DIR`` keeps connection files there too.
    """
    import os

    from kernel_ext.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    install(prefix=str(prefix))
    paths = [str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH", "")]
    return {"JUPYTER_PATH": os.pathsep.join(p for p in paths if p),
            "JUPYTER_RUNTIME_DIR": str(prefix / "runtime")}


@pytest.fixture
def pyx_shell(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A real IPython InteractiveShell with ``%load_ext pyx_magics``, working in ``tmp_path``
    (so the investigation directory is ``tmp_path/temp``) with no PYX_DIR/PYX_TOPIC/PYX_ENV."""
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.chdir(tmp_path)
    for var in ("PYX_DIR", "PYX_TOPIC", "PYX_ENV"):
        monkeypatch.delenv(var, raising=False)
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "pyx_magics")
    yield ip
    ip.run_line_magic("unload_ext", "pyx_magics")
    InteractiveShell.clear_instance()
