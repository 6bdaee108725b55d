"""Kafka, read-only: offsets, consumer-group lag, counts and messages in a time window.

``connect(run)`` returns a :class:`KafkaSession` (``pyx.kafka()`` in a task). Safety by design:

* messages are read with ``group_id=None`` + ``assign()`` (no group join, no commit, ever);
* a group's committed offsets come from the admin ``OffsetFetch`` with explicit partitions
  (reading them never joins the group);
* ``isolation_level='read_committed'`` for reads, so aborted transactional records do not look
  like duplicates.

aiokafka runs on a private event loop in a worker thread (one per session): ipykernel runs cells
inside a running loop, so the caller's thread never runs ``asyncio.run``. Every call is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, TypeVar

from pyx_magics.core.errors import ConnectionProblem, UsageProblem
from pyx_magics.core.hashing import atomic_write, pretty_json, sha256_json
from pyx_magics.core.manifest import rfc3339
from pyx_magics.core.names import NAME_RE, check_name
from pyx_magics.datalayer import config, guard

if TYPE_CHECKING:
    import pandas as pd
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import ConsumerRecord

__all__ = ["KafkaSession", "connect", "decode_bytes", "group_owners", "lag_verdict", "offsets_frame", "time_answer_problem"]

T = TypeVar("T")
TABLE_COLUMNS = ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID", "HOST",
                 "CLIENT-ID")
PROGRESS_MIN = 20_000  #: scans expected to read fewer messages show no progress bar
_POLL_MS = 200
LOST_CHECK_S = 1.0  #: a call waiting (or a scan idle) this long checks that a configured broker still accepts TCP
_SEVERITY = {"OK": 0, "WARN": 1, "STOP": 2, "STALL": 3, "REWIND": 4}  # Burrow's order: worst wins
NOT_ENOUGH = "not enough samples"


# ---------------------------------------------------------------- the private loop


class _LoopThread:
    """An asyncio loop running forever on a daemon thread; coroutines are submitted to it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float, check: Callable[[], None] | None = None) -> T:
        """The coroutine's result within ``timeout`` s; ``check()`` runs every LOST_CHECK_S s of waiting
        (it raises to give up early)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        deadline = time.monotonic() + timeout
        try:
            while True:
                wait = deadline - time.monotonic()
                try:
                    return fut.result(max(0.0, wait if check is None else min(wait, LOST_CHECK_S)))
                except TimeoutError:
                    if fut.done() or check is None or time.monotonic() >= deadline:
                        raise
                    check()
        except BaseException:  # timeout, lost broker, KeyboardInterrupt: do not leave the coroutine running
            fut.cancel()
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(BaseException):
                self.call(cancel_all(), 5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


# ---------------------------------------------------------------- pure helpers


def _probe(host: str, port: int, timeout: float) -> str | None:
    """None if a TCP connection to host:port succeeds within ``timeout``, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _describe(exc: BaseException) -> str:
    text, name = str(exc), type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def decode_bytes(raw: bytes | None) -> tuple[Any, str]:
    """A message key/value/header as evidence: ``(decoded, encoding)``.

    encoding is ``json`` (parsed), ``text`` (UTF-8 that is not JSON), ``base64`` (not UTF-8) or ``null``.
    """
    if raw is None:
        return None, "null"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"
    try:
        return json.loads(text), "json"
    except ValueError:
        return text, "text"


def _ms(value: datetime | str | None, what: str) -> int | None:
    """Epoch milliseconds of an aware datetime (or ISO 8601 string with an offset)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise UsageProblem(f"{what}={value!r} is not an ISO 8601 time") from None
    if not isinstance(value, datetime):
        raise UsageProblem(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise UsageProblem(f"{what}={value.isoformat()} has no time zone",
                           hint="pass an aware datetime, e.g. datetime(2026, 1, 2, 3, 4, tzinfo=UTC)")
    return int(value.timestamp() * 1000)


def _iso_ms(ms: int | None) -> str | None:
    return None if ms is None or ms < 0 else rfc3339(datetime.fromtimestamp(ms / 1000, UTC))


def time_answer_problem(start_ms: int | None, end_ms: int | None, start_answer: tuple[int, int] | None,
                        end_answer: tuple[int, int] | None, beginning: int, end: int,
                        records: Mapping[int, int] | None = None) -> str | None:
    """Why a broker's ``offsets_for_times`` answers for one partition cannot be right, or None.

    Answers are ``(offset, timestamp)`` (None: no record at or after the query time); the broker
    promises the earliest offset whose timestamp is >= the query. ``beginning``/``end`` are the
    partition's offsets; ``records`` maps offsets to the timestamps of the records actually there.
    """
    for name, query, answer in (("start", start_ms, start_answer), ("end", end_ms, end_answer)):
        if query is None or answer is None:
            continue
        offset, ts = answer
        if ts is None or ts < query:
            return f"the {name} lookup returned timestamp {ts}, before the query time {query}"
        if not beginning <= offset < end:
            return f"the {name} lookup returned offset {offset}, outside the partition's offsets [{beginning}, {end})"
        if records and offset in records and records[offset] != ts:
            return (f"the {name} lookup said offset {offset} has timestamp {ts}, "
                    f"but the record there has timestamp {records[offset]}")
    if start_ms is not None and end_ms is not None:
        if start_answer is None and end_answer is not None:
            return "a record exists at or after the end time but none at or after the earlier start time"
        if start_answer is not None and end_answer is not None and start_answer[0] > end_answer[0]:
            return f"the start offset {start_answer[0]} is after the end offset {end_answer[0]}"
        if start_answer is not None and start_answer[1] >= end_ms and (end_answer or (None,))[0] != start_answer[0]:
            return "the first record at or after the start is past the end, yet the end lookup points elsewhere"
    return None


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows formatted like ``kafka-consumer-groups --describe`` (same columns, widths and '-')."""
    def cell(v: Any) -> str:
        return "-" if v is None or v == "" else str(v)

    cells = [[cell(r["group"]), cell(r["topic"]), cell(r["partition"]), cell(r["current_offset"]),
              cell(r["log_end_offset"]), cell(r["lag"]), cell(r["consumer_id"]), cell(r["host"]),
              cell(r["client_id"])] for r in rows]
    width = [max([15, len(TABLE_COLUMNS[i])] + [len(c[i]) for c in cells]) for i in (0, 1, 6, 7)]
    fmt = (f"{{:<{width[0]}}} {{:<{width[1]}}} {{:<10}} {{:<15}} {{:<15}} {{:<15}} "
           f"{{:<{width[2]}}} {{:<{width[3]}}} {{}}")
    lines = [fmt.format(*TABLE_COLUMNS)] + [fmt.format(*c) for c in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def offsets_frame(result: Mapping[str, Any]) -> pd.DataFrame:
    """The partitions of an :meth:`KafkaSession.offsets` result as a DataFrame (CLI column names)."""
    import pandas as pd

    names = dict(zip(("group", "topic", "partition", "current_offset", "log_end_offset", "lag", "consumer_id",
                      "host", "client_id"), TABLE_COLUMNS, strict=True))
    frame = pd.DataFrame(list(result["partitions"]), columns=list(names))
    for col in ("current_offset", "lag"):
        frame[col] = frame[col].astype("Int64")
    return frame.rename(columns=names)


def lag_verdict(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A Burrow-like verdict from two or more :meth:`KafkaSession.offsets` results of one group and topic.

    Per partition, over the samples in time order: REWIND if the committed offset went backwards;
    OK if any sample had no lag; else STOP if the committed offset never moved and the group had
    no member in the last sample (the consumer is gone), STALL if it never moved with members
    present, WARN if it moved but the lag never decreased; else OK. The group takes its worst partition.
    """
    ordered = sorted(samples, key=lambda s: s.get("sampled_at_ms", 0))
    keys = {(s.get("group"), s.get("topic")) for s in ordered}
    if len(keys) > 1:
        raise UsageProblem(f"samples mix groups/topics {sorted(map(str, keys))}; pass samples of one group and topic")
    out: dict[str, Any] = {"status": NOT_ENOUGH, "samples": len(ordered), "partitions": []}
    if len(ordered) < 2 or ordered[0].get("sampled_at_ms") == ordered[-1].get("sampled_at_ms"):
        out["reason"] = f"{len(ordered)} sample(s) at distinct times; call offsets() at least twice, some time apart"
        return out
    group, topic = keys.pop()
    out |= {"group": group, "topic": topic,
            "window_s": round((ordered[-1]["sampled_at_ms"] - ordered[0]["sampled_at_ms"]) / 1000, 3)}
    series: dict[int, list[tuple[int, int]]] = {}
    for s in ordered:
        for p in s["partitions"]:
            if p.get("current_offset") is not None and p.get("lag") is not None:
                series.setdefault(p["partition"], []).append((p["current_offset"], p["lag"]))
    members_last = ordered[-1].get("members")
    worst = None
    for part in sorted(series):
        points = series[part]
        if len(points) < 2:
            out["partitions"].append({"partition": part, "status": NOT_ENOUGH, "reason": "committed in < 2 samples"})
            continue
        committed = [c for c, _ in points]
        lags = [lag for _, lag in points]
        if any(b < a for a, b in zip(committed, committed[1:], strict=False)):
            status, reason = "REWIND", "the committed offset went backwards"
        elif any(lag <= 0 for lag in lags):
            status, reason = "OK", "caught up in at least one sample"
        elif committed[0] == committed[-1]:
            if members_last == 0:
                status, reason = "STOP", "lagging, the committed offset never moved and the group has no members"
            else:
                status, reason = "STALL", "lagging and the committed offset never moved"
        elif all(b >= a for a, b in zip(lags, lags[1:], strict=False)):
            status, reason = "WARN", "committing, but the lag never decreased"
        else:
            status, reason = "OK", "committing and the lag decreased"
        out["partitions"].append({"partition": part, "status": status, "reason": reason,
                                  "committed_first": committed[0], "committed_last": committed[-1],
                                  "lag_first": lags[0], "lag_last": lags[-1]})
        if worst is None or _SEVERITY[status] > _SEVERITY[worst[0]]:
            worst = (status, f"partition {part}: {reason}")
    if worst is None:
        out["reason"] = "no partition has a committed offset in two or more samples"
        return out
    out["status"], out["reason"] = worst
    return out


def group_owners(group: Mapping[str, Any], topic: str) -> dict[int, tuple[str, str, str]]:
    """``{partition: (consumer_id, host, client_id)}`` of ``topic`` from one DescribeGroups group entry."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    owners: dict[int, tuple[str, str, str]] = {}
    for m in group.get("members") or []:
        try:
            assignment = ConsumerProtocolMemberAssignment.decode(m.get("member_assignment") or b"")
        except Exception:  # not a consumer-protocol group, or no assignment reported
            continue
        host = (m.get("client_host") or "").lstrip("/") or "-"
        for tp in assignment.partitions():
            if tp.topic == topic:
                owners[tp.partition] = (m.get("member_id") or "-", host, m.get("client_id") or "-")
    return owners


def _label(value: str | None, fallback: str) -> str:
    if value is not None:
        return check_name(value, "label")
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", fallback).replace("..", "_").strip("._-")[:100]
    return cleaned if NAME_RE.fullmatch(cleaned or "") else "kafka"


def _field(value: Any, path: str) -> Any:
    """``value[a][b]`` for ``path='a.b'`` (None when absent)."""
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


# ---------------------------------------------------------------- scanning state


@dataclass
class _Scan:
    """What a bounded scan read and whether it reached every partition's end."""

    scanned: int = 0
    complete: bool = True
    stopped: str | None = None
    per_partition: dict[int, int] = field(default_factory=dict)


@dataclass
class _Window:
    ranges: dict[Any, tuple[int, int]]
    method: str
    note: str | None = None


# ---------------------------------------------------------------- the session


class KafkaSession:
    """A read-only Kafka session of one task run (see the module docstring for the guarantees)."""

    def __init__(self, run: Any, *, alias: str, endpoint: config.Endpoint, brokers: list[config.Endpoint],
                 request_timeout_s: float, connect_timeout_s: float, use_offsets_for_times: bool | None,
                 security_protocol: str | None, client_id: str | None) -> None:
        self._run = run
        self.alias = alias
        self.endpoint = endpoint
        self.request_timeout_s = float(request_timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.use_offsets_for_times = use_offsets_for_times
        self._brokers = brokers
        self._security_protocol = security_protocol
        self._client_id = client_id or f"pyx-{run.session.topic}"[:100]
        self._lock = threading.RLock()
        self._loop: _LoopThread | None = _LoopThread(f"pyx-kafka-{alias}")
        self._admin: AIOKafkaAdminClient | None = None
        self._reader: AIOKafkaConsumer | None = None  # read_committed, fetches messages
        self._hw: AIOKafkaConsumer | None = None  # read_uncommitted, log-end offsets as the Kafka CLI shows them
        self.identity: dict[str, Any] = {}

    def __repr__(self) -> str:
        state = "closed" if self._loop is None else "open"
        return f"<pyx KafkaSession {self.alias} {self.endpoint.address} cluster={self.identity.get('cluster_id')} {state}>"

    def __enter__(self) -> KafkaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None, what: str = "the request") -> T:
        """Run ``coro`` on the session loop and wait at most ``timeout`` seconds (default: request timeout + 2).

        A call that fails is recorded in ``data_access`` too (with its error), as PostgreSQL and Redis do;
        successful calls are recorded by the public methods, with their rows."""
        t0 = time.perf_counter()
        try:
            return self._call_unrecorded(coro, timeout, what)
        except BaseException as exc:
            if self._run is not None:
                self._run.add_access({"target": self.alias, "op": "failed", "statement": what, "rows": 0,
                                      "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
                                      "error": type(exc).__name__})
            raise

    def _call_unrecorded(self, coro: Coroutine[Any, Any, T], timeout: float | None, what: str) -> T:
        from aiokafka import errors as kerr

        if self._loop is None:
            coro.close()
            raise UsageProblem("this Kafka session is closed", hint="call pyx.kafka() again")
        limit = self.request_timeout_s + 2 if timeout is None else timeout
        try:
            # aiokafka retries a dead broker until request_timeout: notice a vanished one within ~1 s
            return self._loop.call(coro, limit, check=lambda: self._check_reachable(what))
        except TimeoutError:
            raise ConnectionProblem(
                f"Kafka at {self.endpoint.address} (KAFKA_BROKERS) did not answer {what} within {limit:g} s",
                hint=self._advertised_hint()) from None
        except (kerr.KafkaConnectionError, kerr.NodeNotReadyError, kerr.RequestTimedOutError,
                kerr.KafkaTimeoutError) as exc:
            if lost := self._lost(what):
                raise lost from None
            raise ConnectionProblem(f"Kafka at {self.endpoint.address} (KAFKA_BROKERS) failed during {what}: "
                                    f"{_describe(exc)}", hint=self._advertised_hint()) from None
        except (kerr.TopicAuthorizationFailedError, kerr.GroupAuthorizationFailedError,
                kerr.ClusterAuthorizationFailedError) as exc:
            raise ConnectionProblem(f"Kafka refused {what}: {type(exc).__name__}",
                                    hint="check the ACLs of KAFKA_SASL_USERNAME (pyx needs Describe and Read)"
                                    ) from None

    def _lost(self, what: str) -> ConnectionProblem | None:
        """The error to raise if no configured broker accepts a TCP connection now (tunnel or broker down)."""
        why: list[str] = []
        for b in self._brokers:
            problem = _probe(b.host, b.port, min(1.0, self.connect_timeout_s))
            if problem is None:
                return None
            why.append(f"{b.address}: {problem}")
        where = self._brokers[0].address if len(self._brokers) == 1 else ", ".join(b.address for b in self._brokers)
        return ConnectionProblem(f"lost the connection to Kafka at {where} (KAFKA_BROKERS) during {what}: "
                                 f"{'; '.join(why)}",
                                 hint="is the tunnel up and the broker running? call pyx.kafka() again once it answers")

    def _check_reachable(self, what: str) -> None:
        if lost := self._lost(what):
            raise lost

    def _advertised_hint(self) -> str:
        brokers = self.identity.get("brokers") or []
        advertised = ", ".join(f"{b['host']}:{b['port']}" for b in brokers)
        configured = ", ".join(b.address for b in self._brokers)
        if advertised and set(advertised.split(", ")) != set(configured.split(", ")):
            return (f"is the tunnel up? the brokers advertise {advertised} but KAFKA_BROKERS is {configured}; "
                    "each advertised address must be reachable from here")
        return "is the tunnel up?"

    def _record(self, op: str, statement: str, rows: int, t0: float) -> None:
        self._run.add_access({"target": self.alias, "op": op, "statement": statement, "rows": rows,
                              "duration_ms": round((time.perf_counter() - t0) * 1000, 3)})

    def _open(self) -> None:
        """Start the clients on the session loop and record the cluster identity."""
        from aiokafka import errors as kerr

        try:
            self._call(self._start(), self.connect_timeout_s + self.request_timeout_s, "the connection (bootstrap)")
        except kerr.KafkaError as exc:  # e.g. SASL authentication failed
            raise ConnectionProblem(f"Kafka at {self.endpoint.address} (KAFKA_BROKERS) refused the connection: "
                                    f"{_describe(exc)}",
                                    hint="check KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD and security_protocol"
                                    ) from None
        meta = self._call(self._cluster_async(), what="metadata")
        self.identity = meta
        identity_key = str(meta.get("cluster_id") or ",".join(b.address for b in self._brokers))
        self._run.add_target({
            "system": "kafka", "alias": self.alias,
            "endpoint": {"host": self.endpoint.host, "port": self.endpoint.port},
            "identity": meta, "fingerprint": sha256_json(meta)[:16],
        })
        guard.check_identity(self._run.dir, self._run.session.env_label, "kafka", identity_key, self.endpoint.address)

    async def _start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        ep = self._brokers[0]
        common: dict[str, Any] = {
            "bootstrap_servers": [b.address for b in self._brokers], "client_id": self._client_id,
            "request_timeout_ms": int(self.request_timeout_s * 1000),
        }
        protocol = self._security_protocol or ("SASL_PLAINTEXT" if ep.user else "PLAINTEXT")
        common["security_protocol"] = protocol
        if protocol.startswith("SASL"):
            common |= {"sasl_mechanism": "PLAIN", "sasl_plain_username": ep.user or "",
                       "sasl_plain_password": ep.password or ""}
        if protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            common["ssl_context"] = create_ssl_context()
        reader = {"group_id": None, "enable_auto_commit": False, "auto_offset_reset": "earliest",
                  "fetch_max_wait_ms": _POLL_MS, "connections_max_idle_ms": 540_000}
        self._admin = AIOKafkaAdminClient(**common)
        self._reader = AIOKafkaConsumer(**common, **reader, isolation_level="read_committed")
        self._hw = AIOKafkaConsumer(**common, **reader, isolation_level="read_uncommitted")
        await asyncio.gather(self._admin.start(), self._reader.start(), self._hw.start())

    async def _stop(self) -> None:
        for client in (self._reader, self._hw):
            if client is not None:
                await client.stop()
        if self._admin is not None:
            await self._admin.close()

    def close(self) -> None:
        """Stop the clients and the loop thread. Idempotent."""
        with self._lock:
            loop, self._loop = self._loop, None
            if loop is None:
                return
            try:
                loop.call(self._stop(), 5)
            except BaseException:
                pass
            finally:
                loop.close()

    # -- async building blocks (run on the loop)

    @property
    def _a(self) -> AIOKafkaAdminClient:
        assert self._admin is not None
        return self._admin

    @property
    def _r(self) -> AIOKafkaConsumer:
        assert self._reader is not None
        return self._reader

    @property
    def _h(self) -> AIOKafkaConsumer:
        assert self._hw is not None
        return self._hw

    async def _cluster_async(self) -> dict[str, Any]:
        meta = await self._a.describe_cluster()
        brokers = sorted(({"node_id": b["node_id"], "host": b["host"], "port": b["port"], "rack": b.get("rack")}
                          for b in meta.get("brokers", [])), key=lambda b: b["node_id"])
        return {"cluster_id": meta.get("cluster_id"), "controller_id": meta.get("controller_id"), "brokers": brokers}

    async def _describe_topics(self, names: list[str] | None) -> list[dict[str, Any]]:
        # aiokafka's describe_topics() allows auto-creation: on a broker with
        # auto.create.topics.enable (Kafka's default) looking at a missing topic would create it.
        from aiokafka.protocol.metadata import MetadataRequest

        response = await self._a._send_request(MetadataRequest(names, allow_auto_topic_creation=False))
        return list(response.to_object()["topics"])

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        from aiokafka import TopicPartition

        described = await self._describe_topics([topic])
        for t in described:
            if t.get("topic") == topic and not t.get("error_code") and t.get("partitions"):
                return [TopicPartition(topic, p["partition"]) for p in sorted(t["partitions"],
                                                                              key=lambda p: p["partition"])]
        raise UsageProblem(f"Kafka topic {topic!r} does not exist at {self.endpoint.address}",
                           hint="kafka.topics() lists the topics")

    # -- public API

    def cluster(self) -> dict[str, Any]:
        """Cluster id, controller id and brokers (node id, host, port, rack)."""
        with self._lock:
            t0 = time.perf_counter()
            meta = self._call(self._cluster_async(), what="metadata")
            self._record("metadata", "describe cluster", len(meta["brokers"]), t0)
            return meta

    def topics(self, subset: str | Iterable[str] | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Topics (a name list, or a glob like ``'orders.*'``; internal ``__`` topics only when named),
        with partitions and their earliest/latest offsets, at most ``limit`` topics, sorted by name."""
        with self._lock:
            t0 = time.perf_counter()
            result, total = self._call(self._topics_async(subset, limit), what="topic metadata")
            if total > len(result):
                print(f"pyx: showing {len(result)} of {total} topics; pass limit= or subset= for others",
                      file=sys.stderr)
            shown = subset if isinstance(subset, str) or subset is None else ",".join(subset)
            self._record("metadata", f"topics subset={shown} limit={limit}", len(result), t0)
            return result

    async def _topics_async(self, subset: str | Iterable[str] | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        from aiokafka import TopicPartition

        named = None if subset is None or isinstance(subset, str) else list(subset)
        described = await self._describe_topics(named)
        if named is not None:
            missing = sorted(set(named) - {t["topic"] for t in described if not t.get("error_code")})
            if missing:
                raise UsageProblem(f"Kafka topic(s) {missing} do not exist at {self.endpoint.address}",
                                   hint="kafka.topics() lists the topics")
        pattern = subset if isinstance(subset, str) else None
        chosen = sorted((t for t in described if not t.get("error_code")
                         and (named is not None or not t["topic"].startswith("__") or pattern)
                         and (pattern is None or fnmatchcase(t["topic"], pattern))), key=lambda t: t["topic"])
        total = len(chosen)
        chosen = chosen[:max(0, limit)]
        tps = [TopicPartition(t["topic"], p["partition"]) for t in chosen for p in t["partitions"]]
        begin, end = ({}, {}) if not tps else await asyncio.gather(self._h.beginning_offsets(tps),
                                                                   self._h.end_offsets(tps))
        out = []
        for t in chosen:
            parts = [{"partition": p["partition"], "earliest": begin[TopicPartition(t["topic"], p["partition"])],
                      "latest": end[TopicPartition(t["topic"], p["partition"])],
                      "leader": p.get("leader"), "replicas": len(p.get("replicas") or ())}
                     for p in sorted(t["partitions"], key=lambda p: p["partition"])]
            out.append({"topic": t["topic"], "internal": bool(t.get("is_internal")), "partitions": len(parts),
                        "messages": sum(p["latest"] - p["earliest"] for p in parts), "offsets": parts})
        return out, total

    def offsets(self, topic: str, group: str, *, label: str | None = None) -> dict[str, Any]:
        """Committed offset, log-end offset and lag per partition of ``group`` on ``topic`` (never joins it).

        Writes ``kafka_offsets.<label>.<run_id>.json`` (``partitions`` and a ``table`` formatted like
        ``kafka-consumer-groups --describe``). A partition without a commit has current_offset/lag None
        ('-' in the table). Keep the results: :meth:`lag_verdict` judges two or more of them.
        """
        if not isinstance(group, str) or not group:
            raise UsageProblem("offsets() needs a consumer group id")
        name = _label(label, f"{topic}.{group}")
        with self._lock:
            t0 = time.perf_counter()
            result = self._call(self._offsets_async(topic, group), what="consumer-group offsets")
            result["table"] = _table(result["partitions"])
            path = self._run.declare_output(f"kafka_offsets.{name}.{self._run.run_id}.json", "kafka_offsets")
            atomic_write(path, pretty_json(self._run.redactor.json(result)))
            result["path"] = str(path)
            self._record("offsets", f"offsets topic={topic} group={group}", len(result["partitions"]), t0)
            return result

    async def _offsets_async(self, topic: str, group: str) -> dict[str, Any]:
        from aiokafka import TopicPartition

        tps = await self._partitions(topic)
        coordinator = await self._a.find_coordinator(group)
        committed, ends, described = await asyncio.gather(
            self._a.list_consumer_group_offsets(group, coordinator, partitions=tps),
            self._h.end_offsets(tps),
            self._a.describe_consumer_groups([group], coordinator))
        sampled = int(time.time() * 1000)
        owner: dict[int, tuple[str, str, str]] = {}
        state, members = None, 0
        for response in described:
            for g in response.to_object().get("groups", []):
                if g.get("group") == group:
                    state, members = g.get("state"), len(g.get("members") or [])
                    owner = group_owners(g, topic)
        rows = []
        for tp in tps:
            meta = committed.get(tp)
            current = meta.offset if meta is not None and meta.offset >= 0 else None
            end = ends[TopicPartition(tp.topic, tp.partition)]
            cid, host, client = owner.get(tp.partition, ("-", "-", "-"))
            rows.append({"group": group, "topic": topic, "partition": tp.partition, "current_offset": current,
                         "log_end_offset": end, "lag": None if current is None else end - current,
                         "consumer_id": cid, "host": host, "client_id": client})
        known = [r for r in rows if r["current_offset"] is not None]
        return {
            "group": group, "topic": topic, "sampled_at": _iso_ms(sampled), "sampled_at_ms": sampled,
            "group_state": state, "members": members, "partitions": rows,
            "totals": {"partitions": len(rows), "partitions_without_commit": len(rows) - len(known),
                       "current_offset": sum(r["current_offset"] for r in known),
                       "log_end_offset": sum(r["log_end_offset"] for r in rows),
                       "lag": sum(r["lag"] for r in known)},
        }

    offsets_frame = staticmethod(offsets_frame)
    lag_verdict = staticmethod(lag_verdict)

    # -- time windows and scans

    def _window(self, topic: str, start_ms: int | None, end_ms: int | None) -> _Window:
        """Offset ranges ``[lo, hi)`` per partition to scan for records in ``[start, end)``."""
        tps = self._call(self._partitions(topic), what="topic metadata")
        begin = self._call(self._r.beginning_offsets(tps), what="beginning offsets")
        mode = self.use_offsets_for_times
        answers: dict[str, dict[Any, tuple[int, int] | None]] = {"start": {}, "end": {}}
        problem = None
        if (start_ms is not None or end_ms is not None) and mode is not False:
            from aiokafka import errors as kerr

            try:
                for name, query in (("start", start_ms), ("end", end_ms)):
                    if query is not None:
                        got = self._call(self._r.offsets_for_times({tp: query for tp in tps}),
                                         what="offsets_for_times")
                        answers[name] = {tp: None if a is None else (a.offset, a.timestamp) for tp, a in got.items()}
            except kerr.KafkaError as exc:  # e.g. UnsupportedVersionError
                problem = f"offsets_for_times failed ({type(exc).__name__})"
        end = self._call(self._r.end_offsets(tps), what="end offsets")
        timed = start_ms is not None or end_ms is not None
        if timed and mode is not False:
            problem = problem or self._check_answers(tps, start_ms, end_ms, answers, begin, end)
            if problem is None:
                ranges = {}
                for tp in tps:
                    lo = answers["start"].get(tp) if start_ms is not None else (begin[tp], 0)
                    hi = answers["end"].get(tp) if end_ms is not None else (end[tp], 0)
                    ranges[tp] = (end[tp] if lo is None else lo[0], end[tp] if hi is None else hi[0])
                return _Window(ranges, "offsets_for_times")
            if mode is True:
                raise UsageProblem(f"the broker's offsets_for_times answer is not plausible: {problem}",
                                   hint="use use_offsets_for_times=None (or False) to scan from the beginning")
        note = problem and f"{problem}; scanned from the beginning offsets instead"
        return _Window({tp: (begin[tp], end[tp]) for tp in tps}, "scan" if timed else "full", note)

    def _check_answers(self, tps: list[Any], start_ms: int | None, end_ms: int | None,
                       answers: dict[str, dict[Any, tuple[int, int] | None]], begin: Mapping[Any, int],
                       end: Mapping[Any, int]) -> str | None:
        """The first implausible partition answer (checked against the records actually at those offsets)."""
        def problem_of(tp: Any, records: Mapping[int, int] | None) -> str | None:
            why = time_answer_problem(start_ms, end_ms, answers["start"].get(tp), answers["end"].get(tp),
                                      begin[tp], end[tp], records)
            return f"partition {tp.partition}: {why}" if why else None

        for tp in tps:
            if why := problem_of(tp, None):
                return why
        seen: dict[Any, dict[int, int]] = {tp: {} for tp in tps}
        for name in ("start", "end"):
            wanted = {tp: a[0] for tp, a in answers[name].items() if a is not None and a[0] not in seen[tp]}
            for rec in self._scan({tp: (o, o + 1) for tp, o in wanted.items()}, _Scan(), None, "verify"):
                seen[self._tp(rec)][rec.offset] = rec.timestamp
        for tp in tps:
            if why := problem_of(tp, seen[tp]):
                return why
        return None

    @staticmethod
    def _tp(rec: ConsumerRecord[Any, Any]) -> Any:
        from aiokafka import TopicPartition

        return TopicPartition(rec.topic, rec.partition)

    async def _batch(self, active: list[Any], pause: list[Any], ranges: Mapping[Any, tuple[int, int]],
                     limit: int | None) -> tuple[dict[Any, list[Any]], list[Any]]:
        """One fetch round: pause finished partitions, fetch, and say which idle partitions are at their end."""
        if pause:
            self._r.pause(*pause)
        data = await self._r.getmany(*active, timeout_ms=_POLL_MS, max_records=limit)
        done = []
        for tp in active:
            if data.get(tp):
                continue
            pos = await self._r.position(tp)
            stable = self._r.last_stable_offset(tp)
            high = self._r.highwater(tp)
            available = stable if stable is not None else high
            if pos >= ranges[tp][1] or (available is not None and pos >= available):
                done.append(tp)
        return data, done

    async def _assign(self, ranges: Mapping[Any, tuple[int, int]]) -> None:
        self._r.assign(list(ranges))
        for tp, (lo, _) in ranges.items():
            self._r.seek(tp, lo)

    async def _release(self) -> None:
        self._r.assign([])

    def _scan(self, ranges: Mapping[Any, tuple[int, int]], state: _Scan, max_messages: int | None,
              desc: str) -> Iterator[ConsumerRecord[Any, Any]]:
        """Records with ``lo <= offset < hi`` per partition, at most ``max_messages`` (tqdm bar on stderr)."""
        from tqdm import tqdm

        active = {tp: r for tp, r in ranges.items() if r[0] < r[1]}
        if not active:
            return
        total = sum(hi - lo for lo, hi in active.values())
        bar = tqdm(total=min(total, max_messages or total), desc=f"pyx kafka {desc}", unit="msg", file=sys.stderr,
                   disable=total < PROGRESS_MIN, mininterval=0.5, leave=False)
        self._call(self._assign(active), what="assign")
        pause: list[Any] = []
        last_progress = last_check = time.monotonic()
        try:
            while active:
                room = None if max_messages is None else max_messages - state.scanned
                if room is not None and room <= 0:
                    state.complete, state.stopped = False, f"stopped after max_messages={max_messages}"
                    return
                data, done = self._call(self._batch(list(active), pause, active, room), what="fetch")
                pause = []
                got = 0
                for tp, records in data.items():
                    hi = active[tp][1] if tp in active else -1
                    for rec in records:
                        if rec.offset >= hi:
                            break
                        got += 1
                        state.scanned += 1
                        state.per_partition[tp.partition] = state.per_partition.get(tp.partition, 0) + 1
                        yield rec
                    if records and records[-1].offset + 1 >= hi:
                        done.append(tp)
                for tp in set(done):
                    if tp in active:
                        del active[tp]
                        pause.append(tp)
                now = time.monotonic()
                if got:
                    bar.update(got)
                    last_progress = now
                elif now - last_progress > LOST_CHECK_S and now - last_check > LOST_CHECK_S:
                    last_check = now  # aiokafka's fetcher hides a dead broker: getmany() just returns nothing
                    self._check_reachable("fetch")
                if not got and now - last_progress > self.request_timeout_s:
                    parts = ", ".join(str(tp.partition) for tp in active)
                    state.complete = False
                    state.stopped = f"no records for {self.request_timeout_s:g} s from partition(s) {parts}"
                    return
        finally:
            bar.close()
            self._call(self._release(), what="unassign")

    def _scan_window(self, topic: str, start: datetime | str | None, end: datetime | str | None,
                     max_messages: int | None, desc: str) -> tuple[Iterator[ConsumerRecord[Any, Any]], _Scan,
                                                                     _Window, int | None, int | None]:
        start_ms, end_ms = _ms(start, "start"), _ms(end, "end")
        if start_ms is not None and end_ms is not None and end_ms <= start_ms:
            raise UsageProblem(f"end ({end}) must be after start ({start})")
        window = self._window(topic, start_ms, end_ms)
        state = _Scan()

        def in_window() -> Iterator[ConsumerRecord[Any, Any]]:
            for rec in self._scan(window.ranges, state, max_messages, desc):
                if (start_ms is None or rec.timestamp >= start_ms) and (end_ms is None or rec.timestamp < end_ms):
                    yield rec

        return in_window(), state, window, start_ms, end_ms

    @staticmethod
    def _window_text(start_ms: int | None, end_ms: int | None) -> str:
        return f"[{_iso_ms(start_ms) or '-inf'}, {_iso_ms(end_ms) or 'end'})"

    def count_messages(self, topic: str, start: datetime | str | None, end: datetime | str | None, *,
                       max_messages: int | None = 10_000_000) -> dict[str, Any]:
        """Messages per partition with ``start <= timestamp < end`` (aware datetimes; None = open).

        The offset range comes from ``offsets_for_times`` (checked; a bounded scan from the beginning
        when the broker's answer is not plausible), then the range is read and timestamps filtered.
        """
        with self._lock:
            t0 = time.perf_counter()
            records, state, window, start_ms, end_ms = self._scan_window(topic, start, end, max_messages, "count")
            counts: dict[int, list[Any]] = {tp.partition: [0, None, None] for tp in window.ranges}
            for rec in records:
                c = counts[rec.partition]
                c[0] += 1
                c[1] = rec.offset if c[1] is None else c[1]
                c[2] = rec.offset
            parts = [{"partition": p, "count": c[0], "first_offset": c[1], "last_offset": c[2],
                      "scanned": state.per_partition.get(p, 0),
                      "range": list(window.ranges[next(tp for tp in window.ranges if tp.partition == p)])}
                     for p, c in sorted(counts.items())]
            total = sum(p["count"] for p in parts)
            out = {"topic": topic, "start": _iso_ms(start_ms), "end": _iso_ms(end_ms), "method": window.method,
                   "note": window.note, "total": total, "scanned": state.scanned, "complete": state.complete,
                   "stopped": state.stopped, "partitions": parts}
            self._record("fetch", f"count topic={topic} window={self._window_text(start_ms, end_ms)} "
                                  f"method={window.method}", total, t0)
            return out

    def _evidence(self, rec: ConsumerRecord[Any, Any], key: Any, key_enc: str, value: Any, value_enc: str,
                  headers: list[dict[str, Any]]) -> dict[str, Any]:
        """A record as written to disk: every decoded part redacted separately (so the envelope's
        ``key`` field is not taken for a secret-looking name)."""
        red = self._run.redactor
        safe_headers = []
        for h in headers:
            masked = red.json({h["name"]: h["value"]}) if isinstance(h["name"], str) else {h["name"]: h["value"]}
            safe_headers.append({"name": red.text(h["name"]), "value": next(iter(masked.values())),
                                 "encoding": h["encoding"]})
        return {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset,
                "timestamp": _iso_ms(rec.timestamp), "timestamp_ms": rec.timestamp,
                "timestamp_type": "LogAppendTime" if rec.timestamp_type == 1 else "CreateTime",
                "key": red.json(key), "key_encoding": key_enc, "value": red.json(value), "value_encoding": value_enc,
                "headers": safe_headers}

    @staticmethod
    def _decoded(rec: ConsumerRecord[Any, Any]) -> dict[str, Any]:
        key, key_enc = decode_bytes(rec.key)
        value, value_enc = decode_bytes(rec.value)
        headers = []
        for name, raw in rec.headers or ():
            hv, henc = decode_bytes(raw)
            headers.append({"name": name, "value": hv, "encoding": henc})
        return {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset,
                "timestamp": _iso_ms(rec.timestamp), "timestamp_ms": rec.timestamp, "key": key,
                "key_encoding": key_enc, "value": value, "value_encoding": value_enc, "headers": headers}

    def find_messages(self, topic: str, *, key: str | bytes | None = None,
                      predicate: Callable[[dict[str, Any]], bool] | None = None,
                      start: datetime | str | None = None, end: datetime | str | None = None, label: str,
                      max_messages: int | None = 100_000) -> list[dict[str, Any]]:
        """Messages matching ``key`` (exact bytes, str as UTF-8) and ``predicate`` in ``[start, end)``.

        ``predicate`` gets the decoded record (``partition, offset, timestamp, key, value, headers``).
        At most ``max_messages`` are read. Matches go to ``kafka_messages.<label>.<run_id>.jsonl``
        (value as JSON if it parses, else text; non-UTF-8 as base64 with ``value_encoding='base64'``),
        redacted; the same redacted records are returned.
        """
        name = check_name(label, "label")
        want = key.encode("utf-8") if isinstance(key, str) else key
        with self._lock:
            t0 = time.perf_counter()
            records, state, window, start_ms, end_ms = self._scan_window(topic, start, end, max_messages, "find")
            path = self._run.declare_output(f"kafka_messages.{name}.{self._run.run_id}.jsonl", "kafka_messages")
            found: list[dict[str, Any]] = []
            with open(path, "w", encoding="utf-8") as f:
                for rec in records:
                    if want is not None and rec.key != want:
                        continue
                    decoded = self._decoded(rec)
                    if predicate is not None and not predicate(decoded):
                        continue
                    item = self._evidence(rec, decoded["key"], decoded["key_encoding"], decoded["value"],
                                          decoded["value_encoding"], decoded["headers"])
                    f.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
                    found.append(item)
            if not state.complete:
                print(f"pyx: find_messages {state.stopped}; the result may be incomplete", file=sys.stderr)
            what = " ".join(filter(None, [f"key={key!r}" if key is not None else None,
                                          "predicate" if predicate else None]))
            self._record("fetch", f"find topic={topic} {what} window={self._window_text(start_ms, end_ms)} "
                                  f"method={window.method} scanned={state.scanned}", len(found), t0)
            return found

    def duplicates(self, topic: str, id_field: str, *, start: datetime | str | None = None,
                   end: datetime | str | None = None, label: str | None = None,
                   max_messages: int | None = 1_000_000) -> dict[str, Any]:
        """Messages whose JSON value has the same ``id_field`` (dotted path allowed) more than once.

        With ``label``, the duplicate messages go to ``kafka_messages.<label>.<run_id>.jsonl``.
        """
        if not id_field:
            raise UsageProblem("duplicates() needs id_field, e.g. 'order_id'")
        name = check_name(label, "label") if label is not None else None
        with self._lock:
            t0 = time.perf_counter()
            records, state, window, start_ms, end_ms = self._scan_window(topic, start, end, max_messages,
                                                                         "duplicates")
            seen: dict[str, list[dict[str, Any]]] = {}
            raw: dict[tuple[int, int], ConsumerRecord[Any, Any]] = {}
            without = 0
            for rec in records:
                value, enc = decode_bytes(rec.value)
                ident = _field(value, id_field) if enc == "json" else None
                if ident is None:
                    without += 1
                    continue
                ident_key = json.dumps(ident, sort_keys=True, ensure_ascii=False)
                seen.setdefault(ident_key, []).append({"partition": rec.partition, "offset": rec.offset,
                                                       "timestamp": _iso_ms(rec.timestamp)})
                if name is not None:
                    raw[(rec.partition, rec.offset)] = rec
            red = self._run.redactor
            dups = [{"id": red.json(json.loads(k)), "count": len(v), "occurrences": v}
                    for k, v in seen.items() if len(v) > 1]
            dups.sort(key=lambda d: (-d["count"], json.dumps(d["id"], sort_keys=True)))
            out: dict[str, Any] = {
                "topic": topic, "id_field": id_field, "start": _iso_ms(start_ms), "end": _iso_ms(end_ms),
                "method": window.method, "note": window.note, "scanned": state.scanned, "complete": state.complete,
                "stopped": state.stopped, "distinct_ids": len(seen), "without_id": without,
                "duplicate_ids": len(dups), "duplicate_messages": sum(d["count"] for d in dups), "duplicates": dups,
            }
            if name is not None:
                path = self._run.declare_output(f"kafka_messages.{name}.{self._run.run_id}.jsonl", "kafka_messages")
                with open(path, "w", encoding="utf-8") as f:
                    for d in dups:
                        for occ in d["occurrences"]:
                            dec = self._decoded(raw[(occ["partition"], occ["offset"])])
                            item = self._evidence(raw[(occ["partition"], occ["offset"])], dec["key"],
                                                  dec["key_encoding"], dec["value"], dec["value_encoding"],
                                                  dec["headers"])
                            f.write(json.dumps(item | {"duplicate_of": d["id"]}, ensure_ascii=False,
                                               sort_keys=True) + "\n")
                out["path"] = str(path)
            self._record("fetch", f"duplicates topic={topic} id_field={id_field} "
                                  f"window={self._window_text(start_ms, end_ms)} method={window.method} "
                                  f"scanned={state.scanned}", out["duplicate_messages"], t0)
            return out


# ---------------------------------------------------------------- connect


def connect(run: Any, *, request_timeout_s: float = 10, connect_timeout_s: float = 3, alias: str = "kafka",
            use_offsets_for_times: bool | None = None, security_protocol: str | None = None,
            client_id: str | None = None) -> KafkaSession:
    """A read-only :class:`KafkaSession` to ``KAFKA_BROKERS`` (SASL PLAIN with ``KAFKA_SASL_USERNAME/PASSWORD``).

    ``use_offsets_for_times``: None (default) trusts the broker's time lookup only when it is
    plausible, True always trusts it (an implausible answer is an error), False always scans.
    ``security_protocol`` overrides the default (``SASL_PLAINTEXT`` with a user, else ``PLAINTEXT``),
    e.g. ``SASL_SSL``.
    """
    check_name(alias, "alias")
    if security_protocol not in (None, "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise UsageProblem(f"unknown security_protocol {security_protocol!r}",
                           hint="use PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    brokers = config.endpoints().get("kafka")
    if not brokers:
        raise UsageProblem("KAFKA_BROKERS is not set", hint="export KAFKA_BROKERS=host:port[,host:port] (or put it in .env)")
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(brokers))) as pool:
        probes = list(pool.map(lambda b: _probe(b.host, b.port, connect_timeout_s), brokers))
    reachable = [b for b, why in zip(brokers, probes, strict=True) if why is None]
    if not reachable:
        where = "; ".join(f"{b.address}: {why}" for b, why in zip(brokers, probes, strict=True))
        raise ConnectionProblem(f"cannot reach Kafka from KAFKA_BROKERS ({where})",
                                hint="is the tunnel up? (ssh -L / kubectl port-forward)")
    session = KafkaSession(run, alias=alias, endpoint=reachable[0], brokers=reachable,
                           request_timeout_s=request_timeout_s, connect_timeout_s=connect_timeout_s,
                           use_offsets_for_times=use_offsets_for_times, security_protocol=security_protocol,
                           client_id=client_id)
    try:
        session._open()
    except BaseException:
        session.close()
        raise
    return session
