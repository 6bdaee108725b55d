"""The local servers start, answer by protocol with real passwords, and never outlive their owner."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from pyx_magics.core.errors import UsageProblem
from pyx_magics.services import LocalServices, _kafka_api_versions, _pid_alive, down, run_with_services

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[1]


def procs_under(root: Path) -> list[int]:
    """Pids of live processes whose working directory is under ``root`` (servers chdir there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(root)):
                found.append(int(entry.name))
    return found


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A parent dir everyone may traverse, so that all servers' dirs (PostgreSQL's too) are under it."""
    path = Path(tempfile.mkdtemp(prefix="pyx-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def py(*code: str) -> list[str]:
    return [sys.executable, "-c", "\n".join(code)]


def test_env_contract(services: LocalServices) -> None:
    env = services.env()
    assert set(env) == {
        "DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD",
        "REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "KAFKA_BROKERS",
    }  # fmt: skip
    pg, rd, kf = (services.services[n] for n in ("postgres", "redis", "kafka"))
    assert env["DATABASE_URL"] == f"postgresql://postgres:{env['DB_PASSWORD']}@127.0.0.1:{pg.port}/pyx"
    assert env["REDIS_URL"] == f"redis://:{env['REDIS_PASSWORD']}@127.0.0.1:{rd.port}/0"
    assert env["KAFKA_BROKERS"] == f"127.0.0.1:{kf.port}"
    assert {s.host for s in services.services.values()} == {"127.0.0.1"}
    assert all(Path(s.log_path).is_file() for s in services.services.values())


def test_postgres_login(service_env: dict[str, str]) -> None:
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        assert conn.execute("select 1, current_database()").fetchone() == (1, "pyx")
    wrong = service_env["DATABASE_URL"].replace(service_env["DB_PASSWORD"], "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_pg_db_is_fresh(pg_db: str) -> None:
    with psycopg.connect(pg_db) as conn:
        conn.execute("create table t (id int primary key)")
        conn.execute("insert into t values (1)")
        assert conn.execute("select count(*) from t").fetchone() == (1,)
        assert conn.execute("select current_database()").fetchone() != ("pyx",)


def test_redis_password(service_env: dict[str, str], redis_db: str) -> None:
    with redis.Redis.from_url(service_env["REDIS_URL"]) as client:
        assert client.ping() is True
    with redis.Redis.from_url(redis_db) as client:
        client.set("k", "v")
        assert client.dbsize() == 1
    wrong = service_env["REDIS_URL"].replace(service_env["REDIS_PASSWORD"], "wrong")
    for url in (wrong, f"redis://127.0.0.1:{service_env['REDIS_PORT']}/0"):
        with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(url) as client:
            client.ping()


def test_kafka_roundtrip(service_env: dict[str, str], kafka_topic: Callable[[str], str]) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    brokers, topic = service_env["KAFKA_BROKERS"], kafka_topic("svc")

    async def roundtrip() -> tuple[bytes | None, bytes | None]:
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
            assert topic in await admin.list_topics()
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=brokers)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"hello", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            record = await asyncio.wait_for(consumer.getone(), 15)
        finally:
            await consumer.stop()
        return record.key, record.value

    assert asyncio.run(roundtrip()) == (b"k", b"hello")


@pytest.mark.parametrize("private", [False, True], ids=["open-root", "private-root"])
def test_stop_leaves_nothing(private: bool, tmp_path: Path, open_root: Path) -> None:
    parent = tmp_path if private else open_root  # pytest's tmp_path is not enterable by `postgres`
    svc = LocalServices(root=parent).start()
    root, dirs = svc.root, list(svc.dirs)
    assert root is not None and root.parent == parent
    assert len(dirs) == (2 if private and os.geteuid() == 0 else 1)
    pids = {name: s.pid for name, s in svc.services.items()}
    ports = [s.port for s in svc.services.values()]
    assert all(_pid_alive(pid) for pid in pids.values())
    assert _kafka_api_versions(svc.services["kafka"].port)
    svc.stop()
    svc.stop()  # idempotent
    assert not any(_pid_alive(pid) for pid in pids.values())
    assert [p for d in dirs for p in procs_under(d)] == []
    assert all(refuses(port) for port in ports)
    assert not any(d.exists() for d in dirs)


def test_subset_and_unknown(tmp_path: Path) -> None:
    with LocalServices(("redis",), root=tmp_path) as svc:
        assert set(svc.services) == {"redis"}
        assert set(svc.env()) == {"REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD"}
    with pytest.raises(UsageProblem):
        LocalServices(("mysql",))


def test_run_with_services_returns_exit_code_and_stops(open_root: Path) -> None:
    out = open_root / "env.json"
    child = py(
        "import json, os, sys, psycopg",
        "psycopg.connect(os.environ['DATABASE_URL']).close()",
        f"open({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))",
        "sys.exit(3)",
    )
    assert run_with_services(child, root=open_root) == 3
    env = json.loads(out.read_text())
    ports = [int(env["DB_PORT"]), int(env["REDIS_PORT"]), int(env["KAFKA_BROKERS"].rsplit(":", 1)[1])]
    assert all(refuses(port) for port in ports)
    assert procs_under(open_root) == []
    assert run_with_services([str(open_root / "no-such-command")], ("redis",), root=open_root) == 127
    assert procs_under(open_root) == []


def test_run_with_services_on_sigterm(open_root: Path) -> None:
    out = open_root / "env.json"
    child = py(
        "import json, os, time",
        f"open({str(out)!r} + '.tmp', 'w').write(json.dumps(dict(os.environ)))",
        f"os.rename({str(out)!r} + '.tmp', {str(out)!r})",
        "time.sleep(60)",
    )
    runner = py(
        "import sys",
        "from pathlib import Path",
        "from pyx_magics.services import run_with_services",
        f"sys.exit(run_with_services({child!r}, root=Path({str(open_root)!r})))",
    )
    proc = subprocess.Popen(runner, cwd=ROOT)
    try:
        wait_for(out)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    env = json.loads(out.read_text())
    assert refuses(int(env["DB_PORT"])) and refuses(int(env["REDIS_PORT"]))
    assert procs_under(open_root) == []


def test_up_down_across_processes(open_root: Path) -> None:
    state_path = open_root / "state" / "services.json"
    code = py(
        "from pathlib import Path",
        "from pyx_magics.services import up",
        f"up(Path({str(state_path)!r}), root=Path({str(open_root)!r}))",
    )
    subprocess.run(code, cwd=ROOT, check=True, timeout=60)
    try:
        assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
        state = json.loads(state_path.read_text())
        env = state["env"]
        pids = [state[name]["pid"] for name in ("postgres", "redis", "kafka")]
        assert all(_pid_alive(pid) for pid in pids)  # the `up` process is gone, the servers are not
        with psycopg.connect(env["DATABASE_URL"]) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        with redis.Redis.from_url(env["REDIS_URL"]) as client:
            assert client.ping() is True
        assert _kafka_api_versions(state["kafka"]["port"])
    finally:
        stopped = down(state_path)
    assert stopped == ["kafka", "redis", "postgres"]
    assert not any(_pid_alive(pid) for pid in pids)
    assert not state_path.exists()
    assert procs_under(open_root) == []
    assert not Path(state["root"]).exists()
    assert down(state_path) == []  # idempotent


def test_services_run_cli_takes_options_after_run_and_returns_the_command_exit_code(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "env.txt"
    code = f"import os; open({str(out)!r}, 'w').write(os.environ.get('REDIS_URL', '') + '|' + os.environ.get('DATABASE_URL', '')); raise SystemExit(4)"
    r = subprocess.run([sys.executable, "-m", "pyx_magics.cli", "services", "run", "--system", "redis", "--",
                        sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 4, r.stderr
    redis_url, database_url = out.read_text().split("|")
    assert redis_url.startswith("redis://") and database_url == ""
