"""pyx.kafka(): read-only offsets, lag, counts and messages against a real (Tansu) broker.

Ground truth comes from what the tests produce (one record per batch, explicit timestamps) and
from raw aiokafka reads that never join a group. Tansu's gaps (SERVICES.md) are not leaned on:
every assertion holds on Apache Kafka too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pyx_magics.core.errors import ConnectionProblem, UsageProblem
from pyx_magics.datalayer import guard
from pyx_magics.datalayer.kafka import (
    KafkaSession,
    connect,
    decode_bytes,
    group_owners,
    lag_verdict,
    offsets_frame,
    time_answer_problem,
)
from pyx_magics.execute import in_process
from pyx_magics.runner import Run, Session, TaskRequest, open_run, run_task
from pyx_magics.services import LocalServices

SECRET = "s3cr3t-token-value-42"
PARTITIONS = 3
COMMITS = {0: 5, 1: 3}  # partition 2 has no commit


@dataclass
class Msg:
    partition: int
    key: bytes | None
    value: bytes | None
    ts: int
    headers: list[tuple[str, bytes]]


@dataclass
class Data:
    brokers: str
    topic: str
    group: str
    base: int
    msgs: list[Msg]
    offsets: dict[tuple[int, int], Msg]  # (partition, offset) -> message

    def end(self, partition: int) -> int:
        return sum(1 for m in self.msgs if m.partition == partition)


def _messages(base: int) -> list[Msg]:
    msgs = [Msg(i % PARTITIONS, f"k{i % 5}".encode(), json.dumps({"id": f"o{i}", "n": i}).encode(),
                base + i * 1000, []) for i in range(30)]
    msgs += [
        Msg(1, b"k3", json.dumps({"id": "o3", "n": 103}).encode(), base + 31_000, [("retry", b"1")]),
        Msg(2, b"k7", json.dumps({"id": "o7", "n": 107}).encode(), base + 32_000, []),
        Msg(0, b"bin", b"\xff\xfe\x00binary", base + 33_000, [("raw", b"\x80\x81")]),
        Msg(1, b"txt", b"hello world", base + 34_000, [("authorization", f"Bearer {SECRET}".encode())]),
        Msg(2, None, json.dumps({"id": "o40", "note": f"token {SECRET}"}).encode(), base + 35_000, []),
    ]
    return msgs


async def _setup(brokers: str, topic: str, group: str, msgs: list[Msg]) -> dict[tuple[int, int], Msg]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers)
    await producer.start()
    placed = {}
    for m in msgs:  # one record per batch (send_and_wait), so every broker's end offsets are exact
        meta = await producer.send_and_wait(topic, m.value, key=m.key, partition=m.partition, timestamp_ms=m.ts,
                                            headers=m.headers)
        placed[(meta.partition, meta.offset)] = m
    await producer.stop()
    # Commit without joining: a group id with manual assign() commits through OffsetCommit only.
    committer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=group, enable_auto_commit=False)
    await committer.start()
    committer.assign([TopicPartition(topic, p) for p in COMMITS])
    await committer.commit({TopicPartition(topic, p): o for p, o in COMMITS.items()})
    await committer.stop()
    return placed


async def _group_state(brokers: str, topic: str, group: str) -> tuple[dict[int, int], list[Any], set[str]]:
    """Independently: the group's committed offsets, its members, and every group the cluster knows."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        described = await admin.describe_consumer_groups([group])
        groups = {g[0] for g in await admin.list_consumer_groups()}
    finally:
        await admin.close()
    members = [m for r in described for g in r.to_object()["groups"] for m in g["members"]]
    return {tp.partition: om.offset for tp, om in committed.items()}, members, groups


@pytest.fixture(scope="module")
def data(services: LocalServices) -> Data:
    brokers = services.env()["KAFKA_BROKERS"]
    topic, group = f"orders-{uuid.uuid4().hex[:10]}", f"billing-{uuid.uuid4().hex[:10]}"
    base = (int(time.time()) - 3600) * 1000
    msgs = _messages(base)
    placed = asyncio.run(_setup(brokers, topic, group, msgs))
    return Data(brokers, topic, group, base, msgs, placed)


@pytest.fixture
def run(tmp_path: Path, service_env: dict[str, str]) -> Run:
    session = Session.start(tmp_path / "temp", "kafka-test", "local", resume=False)
    session.redactor.add_secret(SECRET)
    return open_run(session, TaskRequest("kafka_read", "pass"))


@pytest.fixture
def kafka(run: Run, data: Data) -> Iterator[KafkaSession]:
    session = connect(run, use_offsets_for_times=False)
    yield session
    session.close()


def _at(data: Data, seconds: float) -> datetime:
    return datetime.fromtimestamp(data.base / 1000 + seconds, UTC)


def _expected_counts(data: Data, start_ms: int, end_ms: int) -> dict[int, int]:
    out = dict.fromkeys(range(PARTITIONS), 0)
    for m in data.msgs:
        if start_ms <= m.ts < end_ms:
            out[m.partition] += 1
    return out


# ---------------------------------------------------------------- pure functions


def test_bogus_offsets_for_times_answer_is_detected() -> None:
    """An answer like Tansu's (offset 0 stamped with the broker's clock) is refused; a right one passes."""
    start, end, now = 1_000_000, 1_010_000, 9_000_000
    records = {0: 990_000, 4: 1_002_000, 9: 1_011_000}  # timestamps of the records actually at those offsets
    bogus = time_answer_problem(start, end, (0, now), (0, now), 0, 12, records)
    assert bogus is not None and "offset 0" in bogus and "990000" in bogus
    assert time_answer_problem(start, end, (4, 1_002_000), (9, 1_011_000), 0, 12, records) is None
    assert time_answer_problem(start, None, None, None, 0, 12) is None  # nothing at/after start: valid
    assert "before the query" in (time_answer_problem(start, end, (4, 999_999), None, 0, 12) or "")
    assert "outside" in (time_answer_problem(start, end, (12, 1_002_000), None, 0, 12) or "")
    assert "after the end offset" in (time_answer_problem(start, end, (9, 1_002_000), (4, 1_011_000), 0, 12) or "")
    assert "none at or after" in (time_answer_problem(start, end, None, (9, 1_011_000), 0, 12) or "")
    assert "points elsewhere" in (time_answer_problem(start, end, (4, 1_020_000), (9, 1_020_000), 0, 12) or "")


def _sample(t: int, parts: Mapping[int, tuple[int | None, int]], members: int = 1) -> dict[str, Any]:
    return {"group": "g", "topic": "t", "sampled_at_ms": t, "members": members,
            "partitions": [{"partition": p, "current_offset": c, "log_end_offset": e,
                            "lag": None if c is None else e - c} for p, (c, e) in parts.items()]}


@pytest.mark.parametrize(("parts_a", "parts_b", "members", "status"), [
    ({0: (10, 20)}, {0: (25, 30)}, 1, "OK"),          # lag decreased
    ({0: (10, 10)}, {0: (10, 30)}, 1, "OK"),          # caught up in one sample
    ({0: (10, 20)}, {0: (15, 30)}, 1, "WARN"),        # moving, lag growing
    ({0: (10, 20)}, {0: (10, 30)}, 1, "STALL"),       # lagging, not moving, members present
    ({0: (10, 20)}, {0: (10, 30)}, 0, "STOP"),        # lagging, not moving, consumer gone
    ({0: (10, 20)}, {0: (5, 30)}, 1, "REWIND"),       # committed offset went back
    ({0: (25, 30), 1: (10, 20)}, {0: (30, 30), 1: (10, 40)}, 1, "STALL"),  # worst partition wins
])
def test_lag_verdict_follows_burrow_rules(parts_a: dict[int, tuple[int, int]], parts_b: dict[int, tuple[int, int]],
                                          members: int, status: str) -> None:
    """Two samples give the Burrow status of the worst partition."""
    verdict = lag_verdict([_sample(2000, parts_b, members), _sample(1000, parts_a, members)])
    assert verdict["status"] == status, verdict
    assert verdict["window_s"] == 1.0


def test_lag_verdict_needs_two_samples_with_commits() -> None:
    """One sample, or no committed partitions, is 'not enough samples', never a guess."""
    assert lag_verdict([_sample(1000, {0: (1, 5)})])["status"] == "not enough samples"
    assert lag_verdict([_sample(1000, {0: (None, 5)}), _sample(2000, {0: (None, 9)})])["status"] == \
        "not enough samples"
    with pytest.raises(UsageProblem, match="one group"):
        lag_verdict([_sample(1, {}), {**_sample(2, {}), "group": "other"}])


def test_partition_owners_come_from_member_assignments() -> None:
    """CONSUMER-ID/HOST/CLIENT-ID are read from each member's assignment; unknown bytes are skipped."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    blob = ConsumerProtocolMemberAssignment(0, [("orders", [0, 2]), ("other", [1])], b"").encode()
    group = {"members": [
        {"member_id": "c-1", "client_host": "/10.1.2.3", "client_id": "billing", "member_assignment": blob},
        {"member_id": "c-2", "client_host": "", "client_id": "", "member_assignment": b""},
    ]}
    assert group_owners(group, "orders") == {0: ("c-1", "10.1.2.3", "billing"), 2: ("c-1", "10.1.2.3", "billing")}
    assert group_owners({"members": []}, "orders") == {}


def test_payload_decoding() -> None:
    """JSON parses, other UTF-8 stays text, anything else is base64 with a flag."""
    assert decode_bytes(b'{"a": 1}') == ({"a": 1}, "json")
    assert decode_bytes(b"hello") == ("hello", "text")
    assert decode_bytes(b"\xff\x00") == (base64.b64encode(b"\xff\x00").decode(), "base64")
    assert decode_bytes(None) == (None, "null")


# ---------------------------------------------------------------- against the broker


@pytest.mark.services
def test_offsets_report_committed_end_and_lag_like_the_cli(kafka: KafkaSession, run: Run, data: Data) -> None:
    """Per partition: committed offset, log-end offset and lag; '-' where the group never committed."""
    result = kafka.offsets(data.topic, data.group, label="billing")
    rows = {r["partition"]: r for r in result["partitions"]}
    for p in range(PARTITIONS):
        assert rows[p]["log_end_offset"] == data.end(p)
        assert rows[p]["current_offset"] == COMMITS.get(p)
        assert rows[p]["lag"] == (data.end(p) - COMMITS[p] if p in COMMITS else None)
        assert rows[p]["consumer_id"] == "-"
    assert result["totals"]["lag"] == sum(data.end(p) - o for p, o in COMMITS.items())
    assert result["totals"]["partitions_without_commit"] == 1
    lines = result["table"].splitlines()
    assert lines[0].split() == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                                "CONSUMER-ID", "HOST", "CLIENT-ID"]
    assert lines[3].split() == [data.group, data.topic, "2", "-", str(data.end(2)), "-", "-", "-", "-"]
    path = Path(result["path"])
    assert path.name == f"kafka_offsets.billing.{run.run_id}.json"
    saved = json.loads(path.read_text())
    assert saved["table"] == result["table"] and len(saved["partitions"]) == PARTITIONS
    frame = offsets_frame(result)
    assert list(frame.columns)[:6] == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"]
    assert frame["LAG"].isna().sum() == 1
    assert run.data_access[-1]["op"] == "offsets"
    assert run.data_access[-1]["statement"] == f"offsets topic={data.topic} group={data.group}"


@pytest.mark.services
def test_reading_never_joins_or_commits(kafka: KafkaSession, data: Data) -> None:
    """After every read, the group's commits are unchanged, it has no member, and pyx made no group."""
    before = asyncio.run(_group_state(data.brokers, data.topic, data.group))
    kafka.offsets(data.topic, data.group)
    kafka.count_messages(data.topic, _at(data, 0), _at(data, 10))
    kafka.find_messages(data.topic, key="k1", label="k1")
    kafka.duplicates(data.topic, "id")
    kafka.topics()
    committed, members, groups = asyncio.run(_group_state(data.brokers, data.topic, data.group))
    assert committed == before[0] == {0: COMMITS[0], 1: COMMITS[1], 2: -1}
    assert members == []
    assert groups == before[2]


@pytest.mark.services
def test_count_in_a_time_window_by_scan(kafka: KafkaSession, data: Data) -> None:
    """Counts per partition match the produced timestamps (start inclusive, end exclusive)."""
    result = kafka.count_messages(data.topic, _at(data, 5), _at(data, 15))
    assert result["method"] == "scan" and result["complete"]
    assert {p["partition"]: p["count"] for p in result["partitions"]} == \
        _expected_counts(data, data.base + 5000, data.base + 15000)
    assert result["total"] == 10
    everything = kafka.count_messages(data.topic, None, None)
    assert everything["total"] == len(data.msgs) and everything["method"] == "full"
    with pytest.raises(UsageProblem, match="time zone"):
        kafka.count_messages(data.topic, datetime(2026, 1, 1), None)  # noqa: DTZ001


@pytest.mark.services
def test_broker_time_lookup_is_used_only_when_plausible(run: Run, data: Data) -> None:
    """Trusting the broker by default never gives a wrong count; forcing it either agrees or refuses."""
    expected = _expected_counts(data, data.base + 7000, data.base + 21000)
    with connect(run) as auto:
        result = auto.count_messages(data.topic, _at(data, 7), _at(data, 21))
    assert {p["partition"]: p["count"] for p in result["partitions"]} == expected
    assert result["method"] in ("offsets_for_times", "scan")
    assert (result["note"] is not None) == (result["method"] == "scan")
    with connect(run, use_offsets_for_times=True) as forced:
        try:
            forced_result = forced.count_messages(data.topic, _at(data, 7), _at(data, 21))
        except UsageProblem as exc:
            assert "not plausible" in str(exc)
        else:
            assert {p["partition"]: p["count"] for p in forced_result["partitions"]} == expected


@pytest.mark.services
def test_max_messages_bounds_a_scan(kafka: KafkaSession, data: Data) -> None:
    """A scan stops at max_messages and says the result is incomplete."""
    result = kafka.count_messages(data.topic, None, None, max_messages=7)
    assert result["scanned"] == 7 and not result["complete"] and "max_messages=7" in result["stopped"]


@pytest.mark.services
def test_find_by_key_and_by_predicate(kafka: KafkaSession, run: Run, data: Data) -> None:
    """Matches by exact key and by predicate on the decoded value go to the JSONL evidence file."""
    by_key = kafka.find_messages(data.topic, key="k3", label="k3")
    expected = sorted((p, o) for (p, o), m in data.offsets.items() if m.key == b"k3")
    assert sorted((r["partition"], r["offset"]) for r in by_key) == expected
    path = run.dir / f"kafka_messages.k3.{run.run_id}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == by_key
    assert all(r["key"] == "k3" and r["value_encoding"] == "json" for r in lines)
    big = kafka.find_messages(data.topic, predicate=lambda r: isinstance(r["value"], dict)
                              and r["value"].get("n", 0) >= 100, start=_at(data, 30), end=_at(data, 40),
                              label="big")
    assert sorted(r["value"]["n"] for r in big) == [103, 107]
    assert big[0]["timestamp"].endswith("Z") and isinstance(big[0]["timestamp_ms"], int)


@pytest.mark.services
def test_non_utf8_text_headers_and_secrets_in_messages(kafka: KafkaSession, run: Run, data: Data) -> None:
    """Binary payloads are base64-flagged, text stays text, and secrets never reach the file."""
    found = {r["key"]: r for r in kafka.find_messages(data.topic, predicate=lambda r: r["key"] in ("bin", "txt", None),
                                                      label="odd")}
    binary = found["bin"]
    assert binary["value_encoding"] == "base64"
    assert base64.b64decode(binary["value"]) == b"\xff\xfe\x00binary"
    assert binary["headers"] == [{"name": "raw", "value": base64.b64encode(b"\x80\x81").decode(),
                                  "encoding": "base64"}]
    assert found["txt"]["value"] == "hello world" and found["txt"]["value_encoding"] == "text"
    assert found[None]["key_encoding"] == "null"
    text = (run.dir / f"kafka_messages.odd.{run.run_id}.jsonl").read_text()
    assert SECRET not in text and "[REDACTED]" in text


@pytest.mark.services
def test_duplicates_by_id_field(kafka: KafkaSession, run: Run, data: Data) -> None:
    """Messages sharing a JSON id are reported with their partitions and offsets."""
    result = kafka.duplicates(data.topic, "id", label="dups")
    by_id = {d["id"]: d for d in result["duplicates"]}
    assert set(by_id) == {"o3", "o7"}
    for ident in ("o3", "o7"):
        expected = sorted((p, o) for (p, o), m in data.offsets.items()
                          if m.value and m.value.startswith(b"{") and json.loads(m.value)["id"] == ident)
        assert sorted((x["partition"], x["offset"]) for x in by_id[ident]["occurrences"]) == expected
    assert result["without_id"] == 2  # the binary and the text message
    lines = (run.dir / f"kafka_messages.dups.{run.run_id}.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {json.loads(line)["duplicate_of"] for line in lines} == {"o3", "o7"}


@pytest.mark.services
def test_topics_and_cluster(kafka: KafkaSession, data: Data) -> None:
    """topics() gives partitions with earliest/latest offsets; cluster() the broker identity."""
    [info] = kafka.topics([data.topic])
    assert info["partitions"] == PARTITIONS
    assert [(p["earliest"], p["latest"]) for p in info["offsets"]] == [(0, data.end(p)) for p in range(PARTITIONS)]
    assert kafka.topics(data.topic[:8] + "*")[0]["topic"] == data.topic
    cluster = kafka.cluster()
    assert cluster["cluster_id"] and cluster["brokers"] and cluster["controller_id"] is not None


@pytest.mark.services
def test_looking_at_a_missing_topic_does_not_create_it(kafka: KafkaSession, data: Data) -> None:
    """A missing topic is a usage error, and the lookup never auto-creates it."""
    from aiokafka.admin import AIOKafkaAdminClient

    missing = f"missing-{uuid.uuid4().hex[:10]}"
    with pytest.raises(UsageProblem, match="does not exist"):
        kafka.count_messages(missing, None, None)
    with pytest.raises(UsageProblem, match="do not exist"):
        kafka.topics([missing])
    with pytest.raises(UsageProblem, match="does not exist"):
        kafka.offsets(missing, data.group)

    async def names() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=data.brokers)
        await admin.start()
        try:
            return await admin.list_topics()
        finally:
            await admin.close()

    assert missing not in asyncio.run(names())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening_fails_fast_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed port is a ConnectionProblem within 3 s naming KAFKA_BROKERS, the address and the tunnel."""
    port = _closed_port()
    monkeypatch.setenv("KAFKA_BROKERS", f"127.0.0.1:{port}")
    session = Session.start(tmp_path / "temp", "t", "local", resume=False)
    run = open_run(session, TaskRequest("k", "pass"))
    t0 = time.monotonic()
    with pytest.raises(ConnectionProblem) as info:
        connect(run)
    assert time.monotonic() - t0 < 3
    assert "KAFKA_BROKERS" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    assert "tunnel" in str(info.value)


def test_a_port_that_is_not_kafka_fails_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener that accepts and hangs up (a tunnel with nothing behind it) is a ConnectionProblem."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]

        def hang_up() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        monkeypatch.setenv("KAFKA_BROKERS", f"127.0.0.1:{port}")
        run = open_run(Session.start(tmp_path / "temp", "t", "local", resume=False), TaskRequest("k", "pass"))
        t0 = time.monotonic()
        with pytest.raises(ConnectionProblem, match="tunnel") as info:
            connect(run, request_timeout_s=2)
        assert time.monotonic() - t0 < 5 and f"127.0.0.1:{port}" in str(info.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("pyx-kafka")]


@pytest.mark.services
def test_works_inside_a_running_event_loop_and_closes_its_thread(run: Run, data: Data) -> None:
    """Called from a coroutine (as ipykernel runs cells), it works; close() ends the loop thread."""
    async def cell() -> dict[str, Any]:
        session = connect(run)
        try:
            return session.offsets(data.topic, data.group)
        finally:
            session.close()

    result = asyncio.run(cell())
    assert result["totals"]["partitions"] == PARTITIONS
    assert not [t for t in threading.enumerate() if t.name.startswith("pyx-kafka")]


@pytest.mark.services
def test_closed_session_refuses_calls(kafka: KafkaSession) -> None:
    """After close(), a call is a clear usage error, not a hang."""
    kafka.close()
    kafka.close()
    with pytest.raises(UsageProblem, match="closed"):
        kafka.cluster()


def _task(tmp_path: Path, label: str, source: str) -> dict[str, Any]:
    session = Session.start(tmp_path / "temp", "kafka-task", label, resume=False)
    _, manifest = run_task(session, TaskRequest("kafka_task", source), in_process(source, {}))
    return manifest


@pytest.mark.services
def test_task_manifest_lists_target_and_access(tmp_path: Path, service_env: dict[str, str], data: Data) -> None:
    """A task using pyx.kafka() records the cluster as a target and each call as data access."""
    source = (f"k = pyx.kafka()\nr = k.offsets({data.topic!r}, {data.group!r}, label='lag')\n"
              f"c = k.count_messages({data.topic!r}, None, None)\n")
    m = _task(tmp_path, "local", source)
    assert m["status"] == "succeeded", m["error"]
    [target] = m["targets"]
    host, port = service_env["KAFKA_BROKERS"].split(":")
    assert target["system"] == "kafka" and target["endpoint"] == {"host": host, "port": int(port)}
    assert target["identity"]["cluster_id"] and target["fingerprint"]
    assert [a["op"] for a in m["data_access"]] == ["offsets", "fetch"]
    assert all(a["target"] == "kafka" and a["duration_ms"] >= 0 for a in m["data_access"])
    assert m["data_access"][1]["rows"] == len(data.msgs)
    [out] = m["files"]["outputs"]
    assert out["role"] == "kafka_offsets" and out["rows"] == PARTITIONS


@pytest.mark.services
def test_guard_refuses_a_cluster_confirmed_under_another_label(tmp_path: Path, service_env: dict[str, str],
                                                               data: Data) -> None:
    """A cluster confirmed as 'prod' is refused when the session declares 'staging'."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def cluster_id() -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=data.brokers)
        await admin.start()
        try:
            return str((await admin.describe_cluster())["cluster_id"])
        finally:
            await admin.close()

    root = tmp_path / "temp"
    root.mkdir()
    guard.record(root, "prod", "kafka", {"host": "10.0.0.9", "port": 9092}, asyncio.run(cluster_id()), None)
    m = _task(tmp_path, "staging", f"pyx.kafka().offsets({data.topic!r}, {data.group!r})\n")
    assert m["status"] == "refused", m["error"]
    assert "prod" in m["error"]["message"] and "staging" in m["error"]["message"]
    assert not [t for t in threading.enumerate() if t.name.startswith("pyx-kafka")]
    assert not list(root.glob("kafka_offsets.*"))


def test_window_times_must_be_aware() -> None:
    """Window bounds are aware datetimes or ISO strings with an offset; anything else is a usage error."""
    from pyx_magics.datalayer.kafka import _ms

    assert _ms(datetime(2026, 1, 1, tzinfo=UTC), "start") == 1767225600000
    assert _ms("2026-01-01T00:00:00Z", "start") == 1767225600000
    assert _ms(datetime(2026, 1, 1, 1, tzinfo=UTC) - timedelta(hours=1), "end") == 1767225600000
    with pytest.raises(UsageProblem, match="ISO 8601"):
        _ms("yesterday", "start")
