"""pyx.redis(): read-only on the wire, recorded, fast to fail, and faithful to what Redis holds.

Every check reads the server back with plain redis-py (the independent reading).
"""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pyx_magics.core.errors import ConnectionProblem, UnsafeOperation, WrongEnvironment
from pyx_magics.datalayer import guard
from pyx_magics.datalayer.redis import RedisSession, connect, key_pattern
from pyx_magics.execute import in_process
from pyx_magics.runner import Run, Session, TaskRequest, run_task

pytestmark = pytest.mark.services
REDIS_VARS = ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "PYX_ENV")


@pytest.fixture
def redis_env(redis_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """REDIS_URL points at the flushed test database."""
    for var in REDIS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("REDIS_URL", redis_db)
    return redis_db


@pytest.fixture
def raw(redis_env: str) -> Iterator[Any]:
    with redis.Redis.from_url(redis_env) as client:
        yield client


def new_run(tmp_path: Path, allow_write: str | None = None, label: str = "local") -> Run:
    session = Session.start(tmp_path / "temp", "t1", label, resume=False)
    return Run(session, TaskRequest("redis_check", "pass", allow_write=allow_write))


@pytest.fixture
def session(raw: Any, tmp_path: Path) -> Iterator[RedisSession]:
    r = connect(new_run(tmp_path))
    yield r
    r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accesses(r: RedisSession, op: str) -> list[dict[str, Any]]:
    return [a for a in r.run.data_access if a["op"] == op]


# ---------------------------------------------------------------- safety


def test_set_is_refused_in_read_only_mode_by_every_route(session: RedisSession, raw: Any) -> None:
    """SET is refused via the client, execute_command, a pipeline and a raw pooled connection; the key is unchanged."""
    raw.set("order:1", "before")
    c: Any = session.client
    with pytest.raises(UnsafeOperation, match=r"SET.*--allow-write"):
        c.set("order:1", "after")
    with pytest.raises(UnsafeOperation, match="SET"):
        c.execute_command("SET", "order:1", "after")
    with pytest.raises(UnsafeOperation, match="SET"):
        session.set("order:1", "after")
    pipe: Any = c.pipeline()
    with pytest.raises(UnsafeOperation, match="SET"):
        pipe.get("order:1").set("order:1", "after")
    pipe.command_stack.append((("SET", "order:1", "after"), {}))
    with pytest.raises(UnsafeOperation, match="SET"):
        pipe.execute()
    conn = c.connection_pool.get_connection()
    try:
        with pytest.raises(UnsafeOperation, match="SET"):
            conn.send_command("SET", "order:1", "after")
        with pytest.raises(UnsafeOperation, match="DEL"):
            conn.send_packed_command(conn.pack_commands([("GET", "order:1"), ("DEL", "order:1")]))
    finally:
        c.connection_pool.release(conn)
    assert raw.get("order:1") == b"before"
    assert c.get("order:1") == b"before"  # the session still works after the refusals


def test_keys_is_refused_even_with_allow_write(raw: Any, tmp_path: Path) -> None:
    """KEYS is never sent; the message points to SCAN."""
    with connect(new_run(tmp_path, allow_write="repair")) as r:
        with pytest.raises(UnsafeOperation, match=r"KEYS.*scan"):
            r.client.keys("*")
        with pytest.raises(UnsafeOperation, match="KEYS"):
            r.client.execute_command("KEYS", "*")


def test_scripts_transactions_and_admin_commands_are_refused(session: RedisSession, raw: Any) -> None:
    """EVAL, MULTI, FLUSHDB and CONFIG are refused before anything is sent."""
    raw.set("keep", "1")
    with pytest.raises(UnsafeOperation, match=r"EVAL.*scripts can write"):
        session.client.eval("return redis.call('SET', KEYS[1], 'x')", 1, "evil")
    with pytest.raises(UnsafeOperation, match="MULTI"):
        session.client.execute_command("MULTI")
    with pytest.raises(UnsafeOperation, match="FLUSHDB"):
        session.client.flushdb()
    with pytest.raises(UnsafeOperation, match="CONFIG GET"):
        session.client.config_get("requirepass")
    assert raw.exists("evil") == 0 and raw.get("keep") == b"1"


def test_unbounded_reads_are_refused_and_bounded_ones_work(session: RedisSession, raw: Any) -> None:
    """LRANGE 0 -1, XRANGE without COUNT, HGETALL and SCAN COUNT 100000 are refused; slices work."""
    raw.rpush("l", *range(5))
    raw.hset("h", mapping={"a": "1"})
    raw.xadd("s", {"f": "v"})
    with pytest.raises(UnsafeOperation, match="LRANGE"):
        session.client.lrange("l", 0, -1)
    with pytest.raises(UnsafeOperation, match="XRANGE needs COUNT"):
        session.client.xrange("s")
    with pytest.raises(UnsafeOperation, match="HSCAN"):
        session.client.hgetall("h")
    with pytest.raises(UnsafeOperation, match="COUNT"):
        session.client.scan(0, count=100_000)
    assert session.client.lrange("l", 0, 2) == [b"0", b"1", b"2"]
    assert len(session.client.xrange("s", count=10) or []) == 1


def test_a_transaction_pipeline_of_reads_works(session: RedisSession, raw: Any) -> None:
    """MULTI/EXEC that redis-py wraps around checked reads is allowed, and recorded as one entry."""
    raw.set("a", "1")
    raw.set("b", "2")
    pipe: Any = session.client.pipeline(transaction=True)
    assert pipe.get("a").get("b").execute() == [b"1", b"2"]
    entry = accesses(session, "GET")[-1]
    assert entry["statement"] == "GET x2: GET a; GET b" and entry["rows"] == 2


def test_with_allow_write_set_works_and_is_recorded_without_its_value(raw: Any, tmp_path: Path) -> None:
    """--allow-write lets SET through; the access entry names the key but not the value."""
    with connect(new_run(tmp_path, allow_write="fix order 7")) as r:
        assert r.client.set("order:7", "secret-ish value") is True
        entry = accesses(r, "SET")[0]
    assert raw.get("order:7") == b"secret-ish value"
    assert entry["statement"] == "SET order:7 …(+1 args)" and entry["target"] == "redis"


# ---------------------------------------------------------------- connecting


def test_a_closed_port_fails_fast_naming_the_variable_and_the_tunnel(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing listening: ConnectionProblem in < 3 s with REDIS_URL, host:port and the tunnel question."""
    for var in REDIS_VARS:
        monkeypatch.delenv(var, raising=False)
    port = free_port()
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
    t0 = time.monotonic()
    with pytest.raises(ConnectionProblem) as info:
        connect(new_run(tmp_path))
    assert time.monotonic() - t0 < 3
    text = str(info.value)
    assert "REDIS_URL" in text and f"127.0.0.1:{port}" in text and "tunnel" in text
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.setenv("REDIS_PORT", str(port))
    with pytest.raises(ConnectionProblem, match=f"REDIS_PORT.*127.0.0.1:{port}"):
        connect(new_run(tmp_path))


def test_a_wrong_password_says_so_without_the_password(redis_env: str, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """Wrong password: a login message that names what to check and never the password."""
    wrong = "not-the-pass-" + uuid.uuid4().hex
    host_port = redis_env.split("@", 1)[1].split("/", 1)[0]
    monkeypatch.setenv("REDIS_URL", f"redis://:{wrong}@{host_port}/1")
    with pytest.raises(ConnectionProblem) as info:
        connect(new_run(tmp_path))
    text = str(info.value)
    assert "refused the login" in text and "password in REDIS_URL" in text
    assert wrong not in text and wrong not in repr(info.value.args)


def test_connect_records_the_server_identity(session: RedisSession, raw: Any) -> None:
    """The target carries run_id, role, replid, version, port and db from INFO."""
    server, repl = raw.info("server"), raw.info("replication")
    (target,) = session.run.targets
    ident = target["identity"]
    assert target["system"] == "redis" and target["alias"] == "redis" and target["fingerprint"]
    assert ident["run_id"] == server["run_id"] and ident["redis_version"] == server["redis_version"]
    assert ident["role"] == repl["role"] and ident["master_replid"] == repl["master_replid"]
    assert ident["tcp_port"] == server["tcp_port"] and ident["db"] == 1
    assert target["endpoint"]["port"] == server["tcp_port"]


# ---------------------------------------------------------------- inspect


def _text(v: Any) -> str:
    return v.decode()


def test_inspect_a_json_string_with_a_version(session: RedisSession, raw: Any) -> None:
    """A JSON string is decoded, its "v" reported as the version, TTL and sizes read, and the file written."""
    doc = {"v": 2, "id": 1042, "status": "paid"}
    raw.set("order:1042", json.dumps(doc), ex=3600)
    info = session.inspect("order:1042")
    assert info["value"] == json.loads(raw.get("order:1042")) and info["value_format"] == "json"
    assert info["type"] == "string" and info["exists"] and not info["truncated"] and not info["binary"]
    assert info["version"] == {"value": 2, "source": "json field 'v'"}
    assert abs(info["ttl"] - raw.ttl("order:1042")) <= 1 and 0 < info["pttl_ms"] <= 3_600_000
    assert info["encoding"] == raw.object("encoding", "order:1042").decode()
    assert info["memory_bytes"] == raw.memory_usage("order:1042", samples=5)
    assert info["size"] == raw.strlen("order:1042")
    path = session.run.dir / f"redis_value.order_1042.{session.run.run_id}.json"
    assert json.loads(path.read_text())["value"] == doc and info["output"] == path.name
    assert accesses(session, "INSPECT")[0]["rows"] == info["returned"]


def test_inspect_a_hash_with_schema_version_and_a_version_prefix(session: RedisSession, raw: Any) -> None:
    """Hash fields come from HSCAN and match HGETALL; schema_version and the v3: key prefix are both found."""
    raw.hset("v3:user:9", mapping={"schema_version": "3", "name": "Ann", "email": "a@example.org"})
    info = session.inspect("v3:user:9", label="user9")
    assert info["value"] == {_text(k): _text(v) for k, v in raw.hgetall("v3:user:9").items()}
    assert info["size"] == raw.hlen("v3:user:9") == 3 and info["ttl"] == -1
    assert info["version"] == {"value": "3", "source": "hash field 'schema_version'"}
    assert {"value": "3", "source": "key segment 'v3'"} in info["version_hints"]
    assert (session.run.dir / f"redis_value.user9.{session.run.run_id}.json").is_file()


def test_inspect_list_set_zset_and_stream_match_raw_readings(session: RedisSession, raw: Any) -> None:
    """Each aggregate type reads back exactly what redis-py reads, bounded by max_items."""
    raw.rpush("queue:1", *[f"job{i}" for i in range(30)])
    raw.sadd("tags:1", *[f"t{i}" for i in range(20)])
    raw.zadd("rank:1", {f"p{i}": i * 1.5 for i in range(25)})
    ids = [raw.xadd("events:1", {"n": str(i)}) for i in range(12)]
    lst = session.inspect("queue:1", max_items=10)
    assert lst["value"] == [_text(x) for x in raw.lrange("queue:1", 0, 9)]
    assert lst["truncated"] and lst["size"] == 30 and lst["returned"] == 10
    st = session.inspect("tags:1")
    assert sorted(st["value"]) == sorted(_text(x) for x in raw.smembers("tags:1")) and not st["truncated"]
    zs = session.inspect("rank:1")
    assert zs["value"] == [[_text(m), s] for m, s in raw.zrange("rank:1", 0, -1, withscores=True)]
    xs = session.inspect("events:1", max_items=5)
    assert [e["id"] for e in xs["value"]] == [i.decode() for i in ids[:5]]
    assert xs["value"][0]["fields"] == {"n": "0"} and xs["size"] == 12 and xs["truncated"]
    assert {lst["type"], st["type"], zs["type"], xs["type"]} == {"list", "set", "zset", "stream"}


def test_inspect_a_big_list_beyond_one_slice(session: RedisSession, raw: Any) -> None:
    """max_items above 1000 is read in pipelined slices and still matches."""
    raw.rpush("big", *range(2500))
    info = session.inspect("big", max_items=2200)
    assert info["value"] == [_text(x) for x in raw.lrange("big", 0, 2199)] and info["truncated"]


def test_inspect_a_binary_value_is_base64_not_a_crash(session: RedisSession, raw: Any) -> None:
    """A non-UTF-8 string comes back as base64 with the binary flag."""
    blob = b"\x80\x81\xffpickle\x00\x01"
    raw.set("blob:1", blob)
    info = session.inspect("blob:1")
    assert info["binary"] and info["value_format"] == "base64"
    assert base64.b64decode(info["value"]) == raw.get("blob:1") == blob


def test_inspect_a_missing_key(session: RedisSession, raw: Any) -> None:
    """A missing key: exists false, type none, ttl -2, no value."""
    info = session.inspect("nope:1")
    assert raw.exists("nope:1") == 0
    assert (info["exists"], info["type"], info["ttl"], info["value"]) == (False, "none", raw.ttl("nope:1"), None)


# ---------------------------------------------------------------- scans


def _load_mixed(raw: Any) -> dict[str, int]:
    pipe = raw.pipeline(transaction=False)
    for i in range(1500):
        pipe.set(f"order:{i}", "x", ex=30 if i % 3 == 0 else None)
    users = [str(uuid.uuid4()) for _ in range(300)]
    for u in users:
        pipe.hset(f"user:{u}", "n", "1")
    for i in range(120):
        pipe.sadd(f"v2:cart:{i}", "a")
    pipe.rpush("jobs", "a")
    pipe.execute()
    return {"order:*": 1500, "user:*": 300, "v2:cart:*": 120, "jobs": 1}


def test_keyspace_summary_counts_match_an_independent_scan(session: RedisSession, raw: Any) -> None:
    """Per-pattern counts equal raw SCAN counts; TYPE/TTL come from a bounded sample; one SCAN entry is recorded."""
    expected = _load_mixed(raw)
    independent = Counter(key_pattern(k) for k in set(raw.scan_iter(count=500)))
    assert independent == expected
    summary = session.keyspace_summary(label="keyspace")
    got = {p["pattern"]: p for p in summary["patterns"]}
    assert {p: v["count"] for p, v in got.items()} == expected == dict(independent)
    assert summary["keys"] == raw.dbsize() == sum(expected.values()) and summary["sampled"]
    order = got["order:*"]
    assert order["types"] == {"string": order["sample_size"]} and 50 <= order["sample_size"] <= 100
    assert sum(order["ttl"].values()) == order["sample_size"] and order["ttl"]["lt_1m"] > 0
    assert got["user:*"]["types"] == {"hash": got["user:*"]["sample_size"]}
    assert got["jobs"]["types"] == {"list": 1} and got["jobs"]["examples"] == ["jobs"]
    assert all(e.startswith("v2:cart:") for e in got["v2:cart:*"]["examples"])
    (scan_entry,) = accesses(session, "SCAN")
    assert scan_entry["rows"] == summary["keys"] and scan_entry["calls"] == summary["scan_calls"] >= 2
    assert (session.run.dir / f"redis_value.keyspace.{session.run.run_id}.json").is_file()


def test_keyspace_summary_with_a_full_sample_is_exact(session: RedisSession, raw: Any) -> None:
    """With a sample as large as the data, types and TTL buckets equal the raw TYPE/PTTL of every key."""
    _load_mixed(raw)
    summary = session.keyspace_summary("order:*", sample=2000)
    (order,) = summary["patterns"]
    ttls = [raw.pttl(f"order:{i}") for i in range(1500)]
    assert order["sample_size"] == 1500 and not summary["sampled"]
    assert order["ttl"]["no_expiry"] == ttls.count(-1) == 1000 and order["ttl"]["lt_1m"] == 500


def test_scan_yields_each_key_once_and_records_one_entry(session: RedisSession, raw: Any) -> None:
    """scan() equals raw SCAN's key set, and the walk is one data_access entry (client.scan_iter too)."""
    raw.mset({f"k:{i}": "1" for i in range(2500)})
    raw.set("other", "1")
    keys = list(session.scan("k:*"))
    assert len(keys) == len(set(keys)) == 2500
    assert set(keys) == {k.decode() for k in raw.scan_iter("k:*", count=1000)}
    assert len(list(session.scan("k:*", limit=10))) == 10
    assert sum(1 for _ in session.client.scan_iter("k:*")) >= 2500
    scans = accesses(session, "SCAN")
    assert [s["rows"] for s in scans[:2]] == [2500, 10] and len(scans) == 3 and scans[2]["calls"] >= 3


# ---------------------------------------------------------------- through a task


def test_a_task_manifest_lists_the_redis_target_and_its_accesses(raw: Any, tmp_path: Path,
                                                                redis_env: str) -> None:
    """run_task: the manifest has the redis target, the GET and the inspect output, and no password."""
    raw.set("order:1", '{"v": 1}')
    session = Session.start(tmp_path / "temp", "t1", "local", resume=False)
    src = "r = pyx.redis()\nvalue = r.get('order:1')\ninfo = r.inspect('order:1', label='o1')\n"
    run, m = run_task(session, TaskRequest("check_redis", src), in_process(src, {}))
    assert m["status"] == "succeeded", m["error"]
    (target,) = m["targets"]
    assert target["system"] == "redis" and target["identity"]["run_id"] == raw.info("server")["run_id"]
    assert {"op": "GET", "statement": "GET order:1", "rows": 1} .items() <= m["data_access"][1].items()
    assert any(a["op"] == "INSPECT" for a in m["data_access"])
    assert f"redis_value.o1.{run.run_id}.json" in [o["path"] for o in m["files"]["outputs"]]
    password = redis_env.split("@", 1)[0].rsplit(":", 1)[1]
    assert password not in run.manifest_path.read_text()


def test_the_guard_refuses_a_server_confirmed_under_another_label(raw: Any, tmp_path: Path,
                                                                 redis_env: str) -> None:
    """A server confirmed as 'prod' is refused under 'local': WrongEnvironment, and the task is 'refused'."""
    root = tmp_path / "temp"
    root.mkdir()
    guard.record(root, "prod", "redis", {"host": "10.0.0.1", "port": 6379}, raw.info("server")["run_id"], None)
    with pytest.raises(WrongEnvironment, match="prod"):
        connect(new_run(tmp_path))
    session = Session.start(root, "t1", "local", resume=False)
    src = "pyx.redis().get('x')\n"
    _, m = run_task(session, TaskRequest("check_redis", src), in_process(src, {}))
    assert m["status"] == "refused" and m["error"]["type"] == "WrongEnvironment"


def test_scan_drops_keys_that_scan_returns_twice(session: RedisSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """SCAN may repeat a key (during a rehash): scan() and keyspace_summary() count it once."""
    replies = iter([(5, [b"a:1", b"a:2", b"a:1"]), (7, [b"a:2", b"b:1"]), (0, [b"a:3", b"b:1"])])
    real = session.client.execute_command

    def scan_replies(*args: Any, **options: Any) -> Any:
        return next(replies) if args[0] == "SCAN" else real(*args, **options)

    monkeypatch.setattr(session.client, "execute_command", scan_replies)
    summary = session.keyspace_summary(sample=0)
    assert {p["pattern"]: p["count"] for p in summary["patterns"]} == {"a:*": 3, "b:*": 1}
    assert summary["keys"] == 4 and summary["duplicates"] == 3
