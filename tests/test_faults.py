"""Server faults: PostgreSQL, Redis or the Kafka broker going away in the middle of a task.

Each case runs a ``%%pyx_run --timeout 10`` task that is reading when a background thread stops
(or kills, as in a crash) its server. The task fails within its timeout with a ConnectionProblem
that names the server and the tunnel and holds no password; the shell goes on; after a restart
on the same port (same password and data) the next task reaches the server again.

The servers are private to this module (the session's ``services`` are never stopped).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from pyx_magics.core import manifest
from pyx_magics.services import SYSTEMS, LocalServices
from tests.kernel_client import Kernel

pytestmark = pytest.mark.services

TIMEOUT = 10  # the task's --timeout
MARGIN = 2.0  # seconds allowed past it for the cell to come back
TOPIC = "orders"
MESSAGES = 20_000
KEYS = 20_000
NAMES = {"postgres": "PostgreSQL", "redis": "Redis", "kafka": "Kafka"}
VARIABLES = {"postgres": "DATABASE_URL", "redis": "REDIS_URL", "kafka": "KAFKA_BROKERS"}
# rows stream out one per millisecond: a COPY that is still sending when the server goes away
STREAM_SQL = "select g, pg_sleep(0.001) from (select generate_series(1, 1000000) as g) s"

# What the task does once it is reading; `reading` is set by the task, then the server goes away.
FAULT_CELLS = {
    ("postgres", False): "db = pyx.db()\nreading.set()\ndb.query_df('select pg_sleep(30)')\n",
    ("postgres", True): f"db = pyx.db()\nreading.set()\ndb.to_csv({STREAM_SQL!r}, 'slow')\n",
    ("redis", False): "c = pyx.redis().client\nreading.set()\nwhile True:\n    for _ in c.scan_iter(count=10):\n"
                      "        pass\n",
    ("redis", True): "c = pyx.redis().client\nreading.set()\nwhile True:\n    for _ in c.scan_iter(count=10):\n"
                     "        pass\n",
    ("kafka", False): f"k = pyx.kafka()\nreading.set()\nwhile True:\n    k.offsets({TOPIC!r}, 'billing')\n",
    ("kafka", True): f"k = pyx.kafka()\nreading.set()\nwhile True:\n"
                     f"    k.find_messages({TOPIC!r}, key='none', label='scan', max_messages=None)\n",
}
CHECK_CELLS = {
    "postgres": "ok = int(pyx.db().query_df('select 1 as x')['x'][0])\n",
    "redis": "ok = int(pyx.redis().client.get('k:1'))\n",
    "kafka": f"ok = pyx.kafka().find_messages({TOPIC!r}, key='k7', label='k7')[0]['value']['n']\n",
}
CHECK_VALUES = {"postgres": 1, "redis": 1, "kafka": 7}


async def _seed_kafka(brokers: str) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers, linger_ms=20)
    await producer.start()
    try:
        for i in range(MESSAGES):
            await producer.send(TOPIC, b'{"n": %d}' % i, key=b"k%d" % i)
        await producer.flush()
    finally:
        await producer.stop()


def seed(servers: LocalServices, system: str) -> None:
    """Data the tasks read: Redis keys k:0..; a Kafka topic (Tansu keeps it in memory only)."""
    if system == "redis":
        import redis

        with redis.Redis.from_url(servers.services["redis"].url) as client:
            pipe = client.pipeline(transaction=False)
            for i in range(KEYS):
                pipe.set(f"k:{i}", i)
            pipe.execute()
    elif system == "kafka":
        asyncio.run(_seed_kafka(servers.services["kafka"].url))


@pytest.fixture(scope="module")
def servers() -> Iterator[LocalServices]:
    """Private PostgreSQL, Redis and Kafka servers with the data the tasks read."""
    with LocalServices() as svc:
        for system in SYSTEMS:
            seed(svc, system)
        yield svc


@pytest.fixture
def env(servers: LocalServices, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The contract env vars of the private servers; a server an earlier test left stopped is restarted."""
    for system in SYSTEMS:
        if not servers.is_running(system):
            servers.restart_service(system)
            seed(servers, system)
    env = servers.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("PYX_DIR", "PYX_TOPIC", "PYX_ENV"):
        monkeypatch.delenv(key, raising=False)
    return env


@pytest.fixture
def shell(env: dict[str, str], pyx_shell: InteractiveShell) -> InteractiveShell:
    return pyx_shell


def the_manifest(root: Path, task: str) -> dict[str, Any]:
    (path,) = root.glob(f"{task}.*.manifest.json")
    return manifest.read(path)


def secrets_of(servers: LocalServices) -> list[str]:
    return [pw for pw in servers.passwords.values() if pw]


def assert_clear_connection_error(m: dict[str, Any], system: str, servers: LocalServices, root: Path) -> None:
    """Failed (not timed out) with a ConnectionProblem naming the system, its address and the tunnel."""
    svc = servers.services[system]
    assert m["status"] == "failed", m["error"]
    err = m["error"]
    assert err["type"] == "ConnectionProblem", err
    message = err["message"]
    assert f"lost the connection to {NAMES[system]} at {svc.host}:{svc.port}" in message
    assert VARIABLES[system] in message and "tunnel" in message and "running" in message
    assert m["timing"]["duration_ms"] < TIMEOUT * 1000
    assert [t["system"] for t in m["targets"]] == [system]
    failed = [a for a in m["data_access"] if a.get("error")]  # the failed call is evidence too
    assert failed and failed[-1]["target"] == system, m["data_access"]
    evidence = json.dumps(m) + (root / m["log"]["path"]).read_text()
    for secret in secrets_of(servers):
        assert secret not in evidence


def assert_shell_still_works(shell: InteractiveShell) -> None:
    assert shell.run_cell("x = 20 + 22").success and shell.user_ns["x"] == 42
    assert shell.run_cell("%%pyx_run trivial\ny = x + 1").success and shell.user_ns["y"] == 43


@pytest.mark.parametrize(("system", "kill"), [(s, k) for s in SYSTEMS for k in (False, True)],
                         ids=[f"{s}-{'killed' if k else 'stopped'}" for s in SYSTEMS for k in (False, True)])
def test_a_server_lost_mid_task_fails_fast_and_the_next_task_after_a_restart_succeeds(
        shell: InteractiveShell, servers: LocalServices, tmp_path: Path, system: str, kill: bool) -> None:
    """The task fails with a clear ConnectionProblem within its timeout; the shell goes on; after a restart
    on the same port the next task reads again."""
    reading = threading.Event()
    shell.user_ns["reading"] = reading

    def lose_server() -> None:
        if reading.wait(TIMEOUT):
            time.sleep(0.3)  # the task is now inside its read
            servers.stop_service(system, kill=kill)

    port = servers.services[system].port
    stopper = threading.Thread(target=lose_server, daemon=True)
    stopper.start()
    t0 = time.monotonic()
    result = shell.run_cell(f"%%pyx_run fault --timeout {TIMEOUT}\n{FAULT_CELLS[system, kill]}")
    elapsed = time.monotonic() - t0
    stopper.join(15)
    assert reading.is_set() and not servers.is_running(system)
    assert not result.success and type(result.error_in_exec).__name__ == "TaskFailed"
    assert "ConnectionProblem" in str(result.error_in_exec)
    assert elapsed < TIMEOUT + MARGIN
    root = tmp_path / "temp"
    m = the_manifest(root, "fault")
    assert_clear_connection_error(m, system, servers, root)
    if (system, kill) == ("postgres", True):  # the interrupted COPY leaves no half-written extract behind
        assert m["files"]["outputs"] == [] and not list(root.glob("*db_rows*"))

    assert_shell_still_works(shell)

    assert servers.restart_service(system).port == port
    seed(servers, system)
    assert shell.run_cell(f"%%pyx_run after_restart --timeout {TIMEOUT}\n{CHECK_CELLS[system]}").success
    assert shell.user_ns["ok"] == CHECK_VALUES[system]
    assert the_manifest(root, "after_restart")["status"] == "succeeded"


def test_in_the_pyx_kernel_postgres_stopped_mid_copy_fails_the_task_and_the_kernel_goes_on(
        env: dict[str, str], servers: LocalServices, pyx_kernel_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through jupyter_client: the cell errors with the ConnectionProblem (no password), the kernel
    answers the next cell, and after the restart a task reads PostgreSQL again."""
    for key, value in pyx_kernel_env.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "inv"
    monkeypatch.setenv("PYX_DIR", str(root))
    kernel = Kernel(tmp_path)
    try:
        assert kernel.run("topic = 'faults'")[0]["status"] == "ok"
        timer = threading.Timer(1.5, servers.stop_service, ("postgres",))
        t0 = time.monotonic()
        timer.start()
        reply, out = kernel.run(f"%%pyx_run copy_fault --timeout {TIMEOUT}\npyx.db().to_csv({STREAM_SQL!r}, 'slow')")
        elapsed = time.monotonic() - t0
        timer.join(15)
        assert reply["status"] == "error" and "TaskFailed" in out and "lost the connection to PostgreSQL" in out, out
        assert elapsed < TIMEOUT + MARGIN
        for secret in secrets_of(servers):
            assert secret not in out
        assert_clear_connection_error(the_manifest(root, "copy_fault"), "postgres", servers, root)
        reply, out = kernel.run("print(6 * 7)")
        assert (reply["status"], out) == ("ok", "42\n")

        servers.restart_service("postgres")
        reply, out = kernel.run("%%pyx_run after_restart\nprint(int(pyx.db().query_df('select 1 as x')['x'][0]))")
        assert reply["status"] == "ok" and "1\n" in out, out
        assert the_manifest(root, "after_restart")["status"] == "succeeded"
    finally:
        kernel.close()
