"""Read-only, recorded Redis access: ``pyx.redis()``.

Safety is enforced on the wire: every command redis-py packs for our connections goes through
:func:`check_command` (so ``execute_command``, pipelines, pub/sub and ``client.connection_pool``
are all covered), and the client and pipeline also check before anything is queued or sent.
Read-only mode allows only :data:`READ_COMMANDS` (ranges must be bounded); ``--allow-write``
allows everything except :data:`NEVER` (``KEYS``, ``MONITOR``). Every command group is recorded
in ``data_access``; a scan or pipeline is one entry, not one per key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.connection import Connection, ConnectionPool, SSLConnection
from redis.retry import Retry

from pyx_magics.core.errors import ConnectionProblem, UnsafeOperation, UsageProblem
from pyx_magics.core.hashing import atomic_write, pretty_json, sha256_json
from pyx_magics.datalayer import config, guard

__all__ = ["NEVER", "READ_COMMANDS", "GuardedPipeline", "GuardedRedis", "RedisSession", "check_command", "command_name",
           "connect", "identity_key", "key_pattern"]

MAX_SCAN_COUNT = 1000  # SCAN COUNT 1000 ≈ 1 ms of server time; 10000 ≈ 7 ms (DATALAYER.md)
MAX_RANGE = 10_000  # most elements one LRANGE/ZRANGE/XRANGE may return in read-only mode
PIPELINE_SIZE = 1000  # commands per pipeline round trip
SAMPLE_PER_PATTERN = 100  # keys per pattern whose TYPE/PTTL keyspace_summary reads (half first seen, half random)
MAX_SAMPLED_KEYS = 20_000  # TYPE/PTTL of all sampled keys together: ~0.4 s from Python
PROGRESS_MIN_KEYS = 100_000  # show a progress bar when DBSIZE is at least this

READ_COMMANDS = frozenset({
    "GET", "MGET", "STRLEN", "GETRANGE", "SUBSTR", "GETBIT", "BITCOUNT", "BITPOS",
    "EXISTS", "TYPE", "TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME", "RANDOMKEY",
    "OBJECT ENCODING", "OBJECT FREQ", "OBJECT IDLETIME", "OBJECT REFCOUNT", "MEMORY USAGE",
    "HGET", "HMGET", "HLEN", "HSCAN", "HEXISTS", "HSTRLEN",
    "LLEN", "LRANGE", "LINDEX",
    "SCARD", "SSCAN", "SISMEMBER", "SMISMEMBER",
    "ZCARD", "ZSCORE", "ZMSCORE", "ZRANK", "ZREVRANK", "ZCOUNT", "ZLEXCOUNT", "ZRANGE", "ZREVRANGE", "ZSCAN",
    "XLEN", "XRANGE", "XREVRANGE", "XINFO STREAM", "XINFO GROUPS", "XINFO CONSUMERS",
    "SCAN", "DBSIZE", "INFO", "PING", "TIME", "ECHO", "LASTSAVE", "CLIENT ID", "CLIENT GETNAME",
    "WATCH", "UNWATCH",  # connection state only
})  # fmt: skip
NEVER = {  # refused even with --allow-write
    "KEYS": "KEYS blocks the server while it walks the whole keyspace (0.5 s per call on 1M keys); "
            "use pyx.redis().scan(pattern) or keyspace_summary(pattern)",
    "MONITOR": "MONITOR can halve the server's throughput; use SLOWLOG or keyspace_summary() instead",
    "SELECT": "switching databases would make the recorded target wrong; set REDIS_DB or the /DB of REDIS_URL",
}
_CONTAINERS = frozenset({"OBJECT", "MEMORY", "XINFO", "CLIENT", "CONFIG", "SCRIPT", "FUNCTION", "CLUSTER", "ACL",
                         "COMMAND", "DEBUG", "MODULE", "LATENCY", "SLOWLOG", "PUBSUB", "XGROUP"})
_HANDSHAKE = frozenset({"HELLO", "AUTH", "SELECT", "PING", "CLIENT SETNAME", "CLIENT SETINFO",
                        "CLIENT MAINT_NOTIFICATIONS"})
_TRANSACTION = frozenset({"MULTI", "EXEC", "DISCARD"})
_WHY = {
    "EVAL": "scripts can write", "EVALSHA": "scripts can write", "EVAL_RO": "scripts can run unbounded",
    "EVALSHA_RO": "scripts can run unbounded", "FCALL": "functions can write", "FCALL_RO": "functions can run unbounded",
    "MULTI": "a transaction outside a pipeline", "CONFIG GET": "it can reveal secrets such as requirepass",
    "FLUSHDB": "it deletes every key", "FLUSHALL": "it deletes every key of every database",
}
_READ_HINT = "read-only mode allows only bounded reads"
_BIG_READS = {
    "HGETALL": "it can return millions of fields; use HSCAN (client.hscan_iter) or inspect(key)",
    "HKEYS": "it can return millions of fields; use HSCAN (client.hscan_iter) or inspect(key)",
    "HVALS": "it can return millions of fields; use HSCAN (client.hscan_iter) or inspect(key)",
    "SMEMBERS": "it can return millions of members; use SSCAN (client.sscan_iter) or inspect(key)",
    "ZRANGEBYSCORE": "use ZRANGE key min max BYSCORE LIMIT 0 1000",
}


def _arg_text(arg: Any, limit: int = 80) -> str:
    text = bytes(arg).decode("utf-8", "backslashreplace") if isinstance(arg, (bytes, bytearray, memoryview)) \
        else str(arg)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _words(args: tuple[Any, ...]) -> list[Any]:
    """The command's arguments with a multi-word first argument (``"MEMORY USAGE"``) split."""
    if not args:
        return []
    first = args[0]
    first_text = bytes(first).decode("utf-8", "replace") if isinstance(first, (bytes, bytearray, memoryview)) \
        else str(first)
    return [*first_text.split(), *args[1:]]


def command_name(args: tuple[Any, ...]) -> str:
    """``"GET"``, or ``"OBJECT ENCODING"`` for container commands."""
    words = _words(args)
    if not words:
        return ""
    name = str(words[0]).upper()
    if name in _CONTAINERS and len(words) > 1:
        name = f"{name} {_arg_text(words[1]).upper()}"
    return name


def _int(value: Any) -> int | None:
    try:
        return int(value.decode() if isinstance(value, (bytes, bytearray)) else value)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None


def _option(words: list[Any], name: str) -> int | None:
    """The integer after option ``name`` (e.g. ``COUNT``), -1 if present but not a number, None if absent."""
    for i, w in enumerate(words):
        if _arg_text(w).upper() == name:
            value = _int(words[i + 1]) if i + 1 < len(words) else None
            return -1 if value is None else value
    return None


def _span(start: Any, stop: Any) -> int | None:
    a, b = _int(start), _int(stop)
    if a is None or b is None or (a < 0) != (b < 0):
        return None  # e.g. 0 -1: the whole aggregate
    return max(b - a + 1, 0)


def _bound_problem(name: str, words: list[Any]) -> str | None:
    """Why a read would be unbounded, or None."""
    if name in ("SCAN", "HSCAN", "SSCAN", "ZSCAN"):
        count = _option(words, "COUNT")
        if count is not None and not 0 < count <= MAX_SCAN_COUNT:
            return f"{name} COUNT must be 1-{MAX_SCAN_COUNT} (larger counts stall the server)"
    elif name in ("LRANGE", "ZRANGE", "ZREVRANGE"):
        if name == "ZRANGE" and any(_arg_text(w).upper() in ("BYSCORE", "BYLEX") for w in words[4:]):
            words_up = [_arg_text(w).upper() for w in words]
            if "LIMIT" not in words_up:
                return "ZRANGE BYSCORE/BYLEX needs LIMIT offset count"
            i = words_up.index("LIMIT")
            n = _int(words[i + 2]) if i + 2 < len(words) else None
            if n is None or not 0 <= n <= MAX_RANGE:
                return f"ZRANGE LIMIT count must be 0-{MAX_RANGE}"
            return None
        n = _span(words[2], words[3]) if len(words) >= 4 else None
        if n is None or n > MAX_RANGE:
            return (f"{name} {_arg_text(words[1]) if len(words) > 1 else 'key'} "
                    f"{' '.join(_arg_text(w) for w in words[2:4])} is unbounded or longer than {MAX_RANGE}; "
                    f"read a slice such as 0 999, or use inspect(key)")
    elif name in ("XRANGE", "XREVRANGE"):
        count = _option(words, "COUNT")
        if count is None or not 0 <= count <= MAX_RANGE:
            return f"{name} needs COUNT 0-{MAX_RANGE} (client.xrange(key, count=1000))"
    elif name == "MGET" and len(words) - 1 > MAX_RANGE:
        return f"MGET of more than {MAX_RANGE} keys; split it"
    return None


def check_command(args: tuple[Any, ...], write_allowed: bool) -> str:
    """Return the command's name, or raise UnsafeOperation if pyx must not send it."""
    name = command_name(args)
    base = name.split(" ", 1)[0]
    if base in NEVER:
        raise UnsafeOperation(f"{base} is never sent by pyx: {NEVER[base]}")
    if write_allowed:
        return name
    if name in READ_COMMANDS:
        problem = _bound_problem(name, _words(args))
        if problem:
            raise UnsafeOperation(f"refused {name}: {problem}", hint=_READ_HINT)
        return name
    if name in _BIG_READS:
        raise UnsafeOperation(f"refused {name}: {_BIG_READS[name]}", hint=_READ_HINT)
    why = _WHY.get(name) or _WHY.get(base)
    raise UnsafeOperation(
        f"refused {name or 'an empty command'}: pyx Redis connections are read-only"
        + (f" ({why})" if why else " and it is not on the read-only allowlist"),
        hint="if it is intended, rerun the cell as `%%pyx_run TASK --allow-write REASON`",
    )


def _statement(name: str, args: tuple[Any, ...], is_read: bool, limit: int = 300) -> str:
    """``GET order:1042``; a write shows its key only, never its values."""
    rest = _words(args)[len(name.split()):]
    if not is_read and len(rest) > 1:
        text = f"{name} {_arg_text(rest[0])} …(+{len(rest) - 1} args)"
    else:
        text = " ".join([name, *(_arg_text(a) for a in rest)])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rows(result: Any) -> int:
    if result is None:
        return 0
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], (list, dict)):
        return len(result[1])  # (cursor, items) from a SCAN family command
    if isinstance(result, (list, tuple, dict, set)):
        return len(result)
    return 1


# ---------------------------------------------------------------- recording


@dataclass
class _Group:
    """Several commands recorded as one ``data_access`` entry."""

    op: str
    statement: str
    rows: int = 0
    calls: int = 0
    seconds: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    count_rows: bool = True


class _Recorder:
    def __init__(self, run: Any, alias: str, write_allowed: bool, where: str, variable: str) -> None:
        self.run = run
        self.alias = alias
        self.write_allowed = write_allowed
        self.where = where
        self.variable = variable
        self.active: _Group | None = None

    def note(self, op: str, statement: str, rows: int, seconds: float, error: BaseException | None) -> None:
        """One command or pipeline finished: add it to the active group, or record it."""
        g = self.active
        if g is not None:
            g.calls += 1
            g.seconds += seconds
            if g.count_rows:
                g.rows += rows
            if error is not None and g.error is None:
                g.error = type(error).__name__
            return
        entry: dict[str, Any] = {"target": self.alias, "op": op, "statement": statement,
                                 "rows": 0 if error else rows, "duration_ms": round(seconds * 1000, 3)}
        if error is not None:
            entry["error"] = type(error).__name__
        self.run.add_access(entry)

    @contextlib.contextmanager
    def using(self, g: _Group) -> Iterator[_Group]:
        previous, self.active = self.active, g
        try:
            yield g
        finally:
            self.active = previous

    def flush(self, g: _Group) -> None:
        entry: dict[str, Any] = {"target": self.alias, "op": g.op, "statement": g.statement, "rows": g.rows,
                                 "duration_ms": round(g.seconds * 1000, 3), "calls": g.calls, **g.extra}
        if g.error:
            entry["error"] = g.error
        if self.active is not None:  # nested group: fold into the outer one
            self.active.calls += g.calls
            self.active.seconds += g.seconds
            return
        self.run.add_access(entry)

    @contextlib.contextmanager
    def group(self, op: str, statement: str, *, count_rows: bool = True) -> Iterator[_Group]:
        g = _Group(op, statement, count_rows=count_rows)
        try:
            with self.using(g):
                yield g
        except BaseException as exc:
            g.error = g.error or type(exc).__name__
            raise
        finally:
            self.flush(g)

    def lost(self, exc: Exception, what: str) -> ConnectionProblem:
        return ConnectionProblem(f"lost the connection to Redis at {self.where} (from {self.variable}) "
                                 f"during {what}: {self.run.redactor.text(str(exc))}",
                                 hint="is the tunnel still up and the server running? the next command reconnects")


# ---------------------------------------------------------------- guarded connection, client and pipeline


class _GuardedPacker:
    """Wraps redis-py's command packer: nothing reaches the socket without :func:`check_command`."""

    def __init__(self, inner: Any, conn: Any) -> None:
        self._inner = inner
        self._conn = conn

    def pack(self, *args: Any) -> Any:
        conn = self._conn
        name = command_name(args)
        if not ((conn._pyx_handshake and name in _HANDSHAKE) or (conn._pyx_tx and name in _TRANSACTION)):
            check_command(args, conn._pyx_write_allowed)
        return self._inner.pack(*args)


class _GuardMixin:
    _pyx_write_allowed: bool
    _pyx_handshake: bool
    _pyx_tx: bool

    def __init__(self, *args: Any, pyx_write_allowed: bool = False, **kwargs: Any) -> None:
        self._pyx_write_allowed = pyx_write_allowed
        self._pyx_handshake = False
        self._pyx_tx = False
        super().__init__(*args, **kwargs)

    def _construct_command_packer(self, packer: Any) -> Any:
        return _GuardedPacker(super()._construct_command_packer(packer), self)  # type: ignore[misc]

    @contextlib.contextmanager
    def _handshake(self) -> Iterator[None]:
        previous, self._pyx_handshake = self._pyx_handshake, True  # AUTH/HELLO/SELECT allowed only here
        try:
            yield
        finally:
            self._pyx_handshake = previous

    def on_connect(self) -> None:  # redis-py < 6 calls this one directly
        with self._handshake():
            super().on_connect()  # type: ignore[misc]

    def on_connect_check_health(self, check_health: bool = True) -> None:
        with self._handshake():
            super().on_connect_check_health(check_health=check_health)  # type: ignore[misc]


class _GuardedConnection(_GuardMixin, Connection):
    pass


class _GuardedSSLConnection(_GuardMixin, SSLConnection):
    pass


def _recorded(rec: _Recorder, op: str, statement: str, send: Callable[[], Any],
              rows: Callable[[Any], int] = _rows) -> Any:
    """Send (already checked) commands and record them, with their error if any; a lost connection
    is a ConnectionProblem naming the server."""
    t0 = time.perf_counter()
    result: Any = None
    error: BaseException | None = None
    try:
        result = send()
        return result
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        error = exc
        raise rec.lost(exc, op) from exc
    except BaseException as exc:
        error = exc
        raise
    finally:
        rec.note(op, statement, rows(result) if result is not None else 0, time.perf_counter() - t0, error)


def _checked_call(rec: _Recorder, args: tuple[Any, ...], send: Callable[[], Any]) -> Any:
    """Check one command, then send and record it."""
    name = check_command(args, rec.write_allowed)
    return _recorded(rec, name, _statement(name, args, name in READ_COMMANDS), send)


class GuardedRedis(redis.Redis):
    """A ``redis.Redis`` that checks and records every command (``RedisSession.client``)."""

    _pyx: _Recorder

    def execute_command(self, *args: Any, **options: Any) -> Any:
        return _checked_call(self._pyx, args, lambda: super(GuardedRedis, self).execute_command(*args, **options))

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> GuardedPipeline:
        pipe = GuardedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe._pyx = self._pyx
        return pipe

    def _grouped(self, op: str, statement: str, items: Iterator[Any]) -> Iterator[Any]:
        """Run ``items`` (a redis-py scan iterator) recording all its round trips as one entry."""
        rec = self._pyx
        g = _Group(op, statement, count_rows=False)
        try:
            while True:
                with rec.using(g):  # only while redis-py works, not while the caller's loop body runs
                    try:
                        item = next(items)
                    except StopIteration:
                        return
                g.rows += 1
                yield item
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
            rec.flush(g)

    def scan_iter(self, match: Any = None, count: int | None = None, _type: str | None = None,
                  **kwargs: Any) -> Iterator[Any]:
        """SCAN with COUNT 1000 by default, recorded as one entry (keys may repeat: see RedisSession.scan)."""
        count = count or MAX_SCAN_COUNT
        stmt = f"SCAN MATCH {_arg_text(match or '*')} COUNT {count}" + (f" TYPE {_type}" if _type else "")
        return self._grouped("SCAN", stmt, super().scan_iter(match, count, _type, **kwargs))

    def hscan_iter(self, name: Any, match: Any = None, count: int | None = None,
                   no_values: bool | None = None) -> Iterator[Any]:
        count = count or MAX_SCAN_COUNT
        return self._grouped("HSCAN", f"HSCAN {_arg_text(name)} COUNT {count}",
                             super().hscan_iter(name, match, count, no_values))

    def sscan_iter(self, name: Any, match: Any = None, count: int | None = None) -> Iterator[Any]:
        count = count or MAX_SCAN_COUNT
        return self._grouped("SSCAN", f"SSCAN {_arg_text(name)} COUNT {count}",
                             super().sscan_iter(name, match, count))

    def zscan_iter(self, name: Any, match: Any = None, count: int | None = None,
                   score_cast_func: Any = float) -> Iterator[Any]:
        count = count or MAX_SCAN_COUNT
        return self._grouped("ZSCAN", f"ZSCAN {_arg_text(name)} COUNT {count}",
                             super().zscan_iter(name, match, count, score_cast_func))


class GuardedPipeline(Pipeline):
    """A pipeline whose queued commands are checked when queued and again at ``execute``."""

    _pyx: _Recorder

    def pipeline_execute_command(self, *args: Any, **options: Any) -> GuardedPipeline:
        check_command(args, self._pyx.write_allowed)
        super().pipeline_execute_command(*args, **options)
        return self

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        return _checked_call(self._pyx, args,
                             lambda: super(GuardedPipeline, self).immediate_execute_command(*args, **options))

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: Any) -> Any:
        connection._pyx_tx = True  # MULTI/EXEC around commands already checked
        try:
            return super()._execute_transaction(connection, commands, raise_on_error)
        finally:
            connection._pyx_tx = False

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        rec = self._pyx
        names = [check_command(args, rec.write_allowed) for args, _ in self.command_stack]
        if not names:
            return super().execute(raise_on_error)
        kinds = set(names)
        op = names[0] if len(kinds) == 1 else ("MULTI" if self.__dict__.get("transaction") else "PIPELINE")
        shown = "; ".join(_statement(n, args, n in READ_COMMANDS, 80)
                          for n, (args, _) in zip(names[:5], self.command_stack[:5], strict=False))
        more = f"; …(+{len(names) - 5} commands)" if len(names) > 5 else ""
        stmt = f"{op} x{len(names)}: {shown}{more}" if len(names) > 1 else shown
        result: list[Any] = _recorded(rec, op, stmt, lambda: super(GuardedPipeline, self).execute(raise_on_error),
                                      rows=lambda rs: sum(_rows(r) for r in rs if not isinstance(r, Exception)))
        return result


# ---------------------------------------------------------------- key patterns

_HEX = bytes.maketrans(b"0123456789abcdefABCDEF", b"h" * 22)
_SEGMENT_V = (b":v", b"/v", b".v", b"_v", b"-v", b"\nv")
_DIGITS_RE = re.compile(rb"[0-9]+")
_H = rb"[0-9a-fA-F]"
# Every branch starts with a character class (so the regex engine skips ahead fast); the boundary
# checks are lookbehinds placed after the first character for the same reason.
_ID_RE = re.compile(
    rb"[0-9a-fA-F](?:" + _H + rb"{7}(?:-" + _H + rb"{4}){3}-" + _H + rb"{12}"  # uuid
    rb"|" + _H + rb"{11,})"  # hex id (12+ hex characters)
    rb"|[0-9](?<![0-9].)(?<![:/._\n-]v.)(?<!^v.)[0-9]*",  # digit run, but not a version segment like v2
    re.MULTILINE,
)


def _patterns(keys: list[bytes]) -> list[bytes]:
    """The pattern of each key: ids (digit runs, uuids, hex) become ``*``; ``v2`` segments stay."""
    if not keys:
        return []
    joined = b"\n".join(keys)  # one regex pass per batch, not per key
    if joined.count(b"\n") != len(keys) - 1:
        return [_ID_RE.sub(b"*", k) for k in keys]
    slow = b"hhhhhhhh" in joined.translate(_HEX) or joined.startswith(b"v") or any(s in joined for s in _SEGMENT_V)
    return (_ID_RE if slow else _DIGITS_RE).sub(b"*", joined).split(b"\n")


def key_pattern(key: str | bytes) -> str:
    """``order:1042`` → ``order:*``; ``v2:user:5f0c…`` → ``v2:user:*``."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return _ID_RE.sub(b"*", raw).decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------- value decoding

_VERSION_FIELDS = ("schema_version", "version", "v")
_KEY_VERSION = re.compile(r"(?:^|[:/._-])(v\d{1,4})(?=[:/._-]|$)")


def _key_text(key: bytes) -> str | bytes:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key


def _jsonable_key(key: str | bytes) -> str:
    return key if isinstance(key, str) else "base64:" + base64.b64encode(key).decode()


def _text(value: Any, flags: dict[str, bool]) -> Any:
    """bytes → str when UTF-8, else ``{"base64": ...}`` (and set the binary flag)."""
    if not isinstance(value, (bytes, bytearray)):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        flags["binary"] = True
        return {"base64": base64.b64encode(value).decode()}


def _decode_string(raw: bytes, truncated: bool) -> tuple[Any, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if truncated and exc.start >= len(raw) - 3:  # the cut split a multi-byte character
            text = raw[: exc.start].decode("utf-8", "strict")
        else:
            return base64.b64encode(raw).decode(), "base64"
    if not truncated:
        with contextlib.suppress(ValueError):
            return json.loads(text), "json"
    return text, "text"


def _version_hints(key: str | bytes, value: Any, fields: dict[str, Any] | None) -> list[dict[str, Any]]:
    hints = []
    source = value if isinstance(value, dict) else fields
    for name in _VERSION_FIELDS:
        if isinstance(source, dict) and name in source and not isinstance(source[name], (dict, list)):
            kind = "json field" if source is value and fields is None else "hash field"
            hints.append({"value": source[name], "source": f"{kind} {name!r}"})
            break
    text = key if isinstance(key, str) else key.decode("utf-8", "replace")
    m = _KEY_VERSION.search(text)
    if m:
        hints.append({"value": m.group(1)[1:], "source": f"key segment {m.group(1)!r}"})
    return hints


def _s(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _safe_name(key: str | bytes) -> str:
    text = key if isinstance(key, str) else key.decode("utf-8", "replace")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-")
    name = re.sub(r"\.{2,}", ".", name)[:60].strip("._-")
    return name or "key"


_TTL_BUCKETS = (("lt_1m", 60_000), ("lt_1h", 3_600_000), ("lt_1d", 86_400_000))


def _ttl_bucket(pttl: int) -> str:
    if pttl == -1:
        return "no_expiry"
    if pttl < 0:
        return "missing"
    for name, limit in _TTL_BUCKETS:
        if pttl < limit:
            return name
    return "ge_1d"


@dataclass
class _PatternStats:
    count: int = 0
    first: list[bytes] = field(default_factory=list)
    reservoir: list[bytes] = field(default_factory=list)
    offered: int = 0  # keys offered to the reservoir


# ---------------------------------------------------------------- the session


class RedisSession:
    """A read-only (unless ``--allow-write``), recorded Redis connection. ``client`` is a guarded redis.Redis."""

    def __init__(self, run: Any, client: GuardedRedis, endpoint: config.Endpoint, db: int, alias: str,
                 identity: dict[str, Any]) -> None:
        self.run = run
        self.client = client
        self.endpoint = endpoint
        self.db = db
        self.alias = alias
        self.identity = identity
        self._rec = client._pyx

    def __repr__(self) -> str:
        mode = "read-write" if self._rec.write_allowed else "read-only"
        return f"<pyx RedisSession {self.alias} {self.endpoint.address}/{self.db} {mode}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("client", "run"):
            raise AttributeError(name)
        return getattr(self.client, name)  # get, hget, ... go through the guarded client

    def __enter__(self) -> RedisSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (the session cannot be used afterwards)."""
        self.client.close()
        self.client.connection_pool.disconnect()

    # -- scans

    def _scan_batches(self, pattern: str | bytes, count: int, g: _Group) -> Iterator[list[bytes]]:
        """Deduplicated key batches of a SCAN walk; round trips are recorded in ``g``."""
        if not 0 < count <= MAX_SCAN_COUNT:
            raise UsageProblem(f"count must be 1-{MAX_SCAN_COUNT}, got {count}")
        seen: set[bytes] = set()
        cursor: Any = 0
        while True:
            with self._rec.using(g):
                cursor, keys = self.client.execute_command("SCAN", cursor, "MATCH", pattern, "COUNT", count)
            before = len(seen)
            if seen.isdisjoint(keys):
                seen.update(keys)
                fresh = keys if len(seen) - before == len(keys) else list(dict.fromkeys(keys))
            else:  # SCAN may return a key twice
                fresh = [k for k in dict.fromkeys(keys) if k not in seen]
                seen.update(fresh)
            if len(fresh) != len(keys):
                g.extra["duplicates"] = g.extra.get("duplicates", 0) + len(keys) - len(fresh)
                keys = fresh
            g.rows += len(keys)
            if keys:
                yield keys
            if int(cursor) == 0:
                return

    def scan(self, pattern: str = "*", count: int = MAX_SCAN_COUNT, limit: int | None = None) -> Iterator[str | bytes]:
        """Keys matching ``pattern`` (SCAN MATCH, never KEYS), each once; str, or bytes if not UTF-8.

        Recorded as one ``data_access`` entry when the iteration ends.
        """
        g = _Group("SCAN", f"SCAN MATCH {pattern} COUNT {count}" + (f" LIMIT {limit}" if limit else ""),
                   count_rows=False)
        yielded = 0
        try:
            for batch in self._scan_batches(pattern, count, g):
                for k in batch:
                    if limit is not None and yielded >= limit:
                        return
                    yielded += 1
                    yield _key_text(k)
        finally:
            g.rows = yielded
            self._rec.flush(g)

    # -- one key

    def inspect(self, key: str | bytes, *, label: str | None = None, max_items: int = 1000,
                max_bytes: int = 1 << 20) -> dict[str, Any]:
        """Everything about one key (type, TTL, encoding, memory, bounded value, serialization version).

        Written to ``redis_value.<label or key>.<run_id>.json`` and returned.
        """
        if max_items < 1:
            raise UsageProblem(f"max_items must be at least 1, got {max_items}")
        key_b = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        shown = _key_text(key_b)
        flags: dict[str, bool] = {"binary": False}
        with self._rec.group("INSPECT", f"INSPECT {_arg_text(key_b, 200)}", count_rows=False) as g:
            pipe: Any = self.client.pipeline(transaction=False)
            pipe.exists(key_b).type(key_b).ttl(key_b).pttl(key_b)
            pipe.object("encoding", key_b).memory_usage(key_b, samples=5)
            exists, kind, ttl, pttl, encoding, memory = pipe.execute(raise_on_error=False)
            kind = _s(kind) if not isinstance(kind, Exception) else "unknown"
            info: dict[str, Any] = {
                "key": _jsonable_key(shown), "exists": bool(exists), "type": kind, "ttl": ttl, "pttl_ms": pttl,
                "encoding": None if isinstance(encoding, Exception) else _s(encoding),
                "memory_bytes": None if isinstance(memory, Exception) else memory,
                "size": 0, "returned": 0, "truncated": False, "value": None, "value_format": None,
            }
            fields: dict[str, Any] | None = None
            if exists:
                value, size, returned, fmt = self._read_value(key_b, kind, max_items, max_bytes, flags)
                if kind == "hash":
                    fields = value
                info.update(size=size, returned=returned, truncated=returned < size, value=value, value_format=fmt)
            g.rows = info["returned"]
        info["binary"] = flags["binary"] or info["value_format"] == "base64" or isinstance(shown, bytes)
        hints = _version_hints(shown, info["value"] if info["value_format"] == "json" else None, fields)
        info["version"] = hints[0] if hints else None
        info["version_hints"] = hints
        name = label or _safe_name(key_b)
        path = self.run.declare_output(f"redis_value.{name}.{self.run.run_id}.json")
        info["output"] = path.name
        atomic_write(path, pretty_json(self.run.redactor.json(info)))
        return info

    def _read_value(self, key: bytes, kind: str, max_items: int, max_bytes: int,
                    flags: dict[str, bool]) -> tuple[Any, int, int, str | None]:
        """(value, size, returned, format) for one existing key, bounded by max_items / max_bytes."""
        c: Any = self.client  # redis-py's overloads do not know the responses are bytes
        if kind == "string":
            size = c.strlen(key)
            raw = c.get(key) if size <= max_bytes else c.getrange(key, 0, max_bytes - 1)
            raw = raw or b""
            value, fmt = _decode_string(raw, size > max_bytes)
            if fmt == "base64":
                flags["binary"] = True
            return value, size, len(raw), fmt
        if kind == "hash":
            size = c.hlen(key)
            fields: dict[str, Any] = {}
            cursor: Any = 0
            while len(fields) < max_items:
                cursor, part = c.hscan(key, cursor, count=min(MAX_SCAN_COUNT, max_items))
                for f, v in part.items():
                    if len(fields) < max_items:
                        fields[_jsonable_key(_key_text(f))] = _text(v, flags)
                        flags["binary"] |= isinstance(_key_text(f), bytes)
                if int(cursor) == 0:
                    break
            return fields, size, len(fields), "hash"
        if kind == "set":
            size = c.scard(key)
            members: dict[bytes, None] = {}
            cursor = 0
            while len(members) < max_items:
                cursor, part = c.sscan(key, cursor, count=min(MAX_SCAN_COUNT, max_items))
                members.update(dict.fromkeys(part))
                if int(cursor) == 0:
                    break
            chosen = sorted(members)[:max_items]
            return [_text(m, flags) for m in chosen], size, len(chosen), "set"
        if kind in ("list", "zset"):
            size = c.llen(key) if kind == "list" else c.zcard(key)
            pipe = c.pipeline(transaction=False)
            for start in range(0, min(size, max_items), MAX_SCAN_COUNT):
                stop = min(start + MAX_SCAN_COUNT, max_items) - 1
                if kind == "list":
                    pipe.lrange(key, start, stop)
                else:
                    pipe.zrange(key, start, stop, withscores=True)
            parts = pipe.execute() if len(pipe) else []
            items = [x for part in parts for x in part]
            if kind == "list":
                return [_text(x, flags) for x in items], size, len(items), "list"
            return [[_text(m, flags), s] for m, s in items], size, len(items), "zset"
        if kind == "stream":
            size = c.xlen(key)
            entries: list[dict[str, Any]] = []
            after: Any = "-"
            while len(entries) < max_items:
                want = min(MAX_SCAN_COUNT, max_items - len(entries))
                part = c.xrange(key, after, "+", count=want)
                entries += [{"id": _s(i), "fields": {_jsonable_key(_key_text(f)): _text(v, flags)
                                                     for f, v in (fv or {}).items()}} for i, fv in part]
                if len(part) < want:
                    break
                after = "(" + _s(part[-1][0])
            return entries, size, len(entries), "stream"
        return None, 0, 0, None  # module types: only the metadata

    # -- the keyspace

    def keyspace_summary(self, pattern: str = "*", *, sample: int | None = None, count: int = MAX_SCAN_COUNT,
                         label: str | None = None, max_patterns: int = 1000) -> dict[str, Any]:
        """Keys matching ``pattern`` grouped by key pattern (``order:1042`` → ``order:*``).

        Counts come from the full SCAN; TYPE and TTL from a sample of up to ``sample`` keys per
        pattern (default 100: the first half seen, the rest a uniform random sample), at most
        20,000 keys in all. ``sample=0`` reads no TYPE/TTL. Written to JSON when ``label`` is given.
        """
        per_pattern = SAMPLE_PER_PATTERN if sample is None else max(int(sample), 0)
        n_first = (per_pattern + 1) // 2
        n_random = per_pattern - n_first
        t0 = time.perf_counter()
        dbsize = int(self.client.dbsize())
        trips = max(1, math.ceil(dbsize / count))
        target = MAX_SAMPLED_KEYS / 2  # keys offered to the per-pattern reservoirs, over the whole walk
        rate = 1.0 if pattern != "*" or dbsize <= 0 else min(1.0, target / dbsize)
        stats: dict[bytes, _PatternStats] = {}
        other = Counter({"patterns": 0, "keys": 0})
        overflow: set[bytes] = set()
        sampled_total = 0
        rng = random.Random(0)  # reproducible samples for reruns on unchanged data
        scan_g = _Group("SCAN", f"SCAN MATCH {pattern} COUNT {count}", count_rows=False)
        bar = _progress(dbsize, trips, pattern, count)
        try:
            for keys in self._scan_batches(pattern, count, scan_g):
                if bar is not None:
                    bar.update(len(keys))
                pats = _patterns(keys)
                needy: set[bytes] = set()
                for p, n in Counter(pats).items():
                    st = stats.get(p)
                    if st is None:
                        if len(stats) >= max_patterns:
                            if p not in overflow:
                                overflow.add(p)
                                other["patterns"] += 1
                            other["keys"] += n
                            continue
                        st = stats[p] = _PatternStats()
                    st.count += n
                    if len(st.first) < n_first and sampled_total < MAX_SAMPLED_KEYS:
                        needy.add(p)
                firsts: set[bytes] = set()
                if needy:
                    for k, p in zip(keys, pats, strict=True):
                        if p in needy:
                            st = stats[p]
                            if len(st.first) < n_first and sampled_total < MAX_SAMPLED_KEYS:
                                st.first.append(k)
                                firsts.add(k)
                                sampled_total += 1
                if n_random:
                    if pattern != "*":  # MATCH: estimate the matching total from what the walk found so far
                        examined = min(dbsize, scan_g.calls * count) or 1
                        rate = min(1.0, target / max(dbsize * scan_g.rows / examined, 1.0))
                    k_pick = int(len(keys) * rate + rng.random())
                    for i in rng.sample(range(len(keys)), min(k_pick, len(keys))):
                        st = stats.get(pats[i])
                        if st is None or keys[i] in firsts:
                            continue
                        st.offered += 1
                        if len(st.reservoir) < n_random:
                            if sampled_total < MAX_SAMPLED_KEYS:
                                st.reservoir.append(keys[i])
                                sampled_total += 1
                        else:
                            j = rng.randrange(st.offered)
                            if j < n_random:
                                st.reservoir[j] = keys[i]
        finally:
            if bar is not None:
                bar.close()
            self._rec.flush(scan_g)
        sample_keys = [k for st in stats.values() for k in (*st.first, *st.reservoir)]
        facts = self._type_ttl(sample_keys) if sample_keys else {}
        patterns: list[dict[str, Any]] = []
        for p, st in sorted(stats.items(), key=lambda kv: (-kv[1].count, kv[0])):
            types: Counter[str] = Counter()
            ttls: Counter[str] = Counter()
            for k in (*st.first, *st.reservoir):
                kind, pttl = facts.get(k, ("none", -2))
                types[kind] += 1
                ttls[_ttl_bucket(pttl)] += 1
            patterns.append({
                "pattern": p.decode("utf-8", "backslashreplace"), "count": st.count,
                "examples": [_jsonable_key(_key_text(k)) for k in st.first[:3]],
                "sample_size": len(st.first) + len(st.reservoir), "types": dict(types.most_common()),
                "ttl": {b: ttls.get(b, 0) for b in ("no_expiry", "lt_1m", "lt_1h", "lt_1d", "ge_1d", "missing")},
            })
        result: dict[str, Any] = {
            "pattern": pattern, "db": self.db, "dbsize": dbsize, "keys": scan_g.rows,
            "scan_calls": scan_g.calls, "count": count, "duplicates": scan_g.extra.get("duplicates", 0),
            "sampled": any(pt["sample_size"] < pt["count"] for pt in patterns) or bool(other["keys"]),
            "sample": {"per_pattern": per_pattern, "first_seen": n_first, "random": n_random,
                       "keys_sampled": len(sample_keys), "max_sampled_keys": MAX_SAMPLED_KEYS},
            "patterns": patterns,
            "other_patterns": dict(other) if other["keys"] else None,
            "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
        }
        if label is not None:
            path = self.run.declare_output(f"redis_value.{label}.{self.run.run_id}.json")
            result["output"] = path.name
            atomic_write(path, pretty_json(self.run.redactor.json(result)))
        return result

    def _type_ttl(self, keys: list[bytes]) -> dict[bytes, tuple[str, int]]:
        """TYPE and PTTL of ``keys``: pipelines of PIPELINE_SIZE commands, one recorded entry."""
        facts: dict[bytes, tuple[str, int]] = {}
        per = PIPELINE_SIZE // 2
        with self._rec.group("TYPE+PTTL", f"TYPE+PTTL of {len(keys)} sampled keys "
                                          f"(pipelines of {PIPELINE_SIZE})") as g:
            for i in range(0, len(keys), per):
                chunk = keys[i: i + per]
                pipe: Any = self.client.pipeline(transaction=False)
                for k in chunk:
                    pipe.type(k).pttl(k)
                out = pipe.execute(raise_on_error=False)
                for j, k in enumerate(chunk):
                    kind, pttl = out[2 * j], out[2 * j + 1]
                    facts[k] = (_s(kind) if not isinstance(kind, Exception) else "unknown",
                                pttl if isinstance(pttl, int) else -2)
            g.rows = len(facts)
        return facts


def _progress(dbsize: int, trips: int, pattern: str, count: int) -> Any:
    if dbsize < PROGRESS_MIN_KEYS:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        print(f"pyx: scanning ~{dbsize:,} keys: ~{trips:,} SCAN round trips (COUNT {count})", file=sys.stderr)
        return None
    return tqdm(total=dbsize, unit="key", unit_scale=True, file=sys.stderr, mininterval=0.5, leave=False,
                desc=f"SCAN {pattern} (DBSIZE {dbsize:,}, ~{trips:,} round trips)")


# ---------------------------------------------------------------- connect


def _server_identity(client: GuardedRedis, db: int) -> dict[str, Any]:
    """Server-side facts from INFO server/replication (a least-privilege ACL may refuse INFO)."""
    pipe: Any = client.pipeline(transaction=False)
    pipe.info("server").info("replication")
    server, repl = pipe.execute(raise_on_error=False)
    identity: dict[str, Any] = {"db": db}
    if isinstance(server, dict):
        for k in ("redis_version", "valkey_version", "server_name", "redis_mode", "run_id", "tcp_port"):
            if k in server:
                identity[k] = server[k]
    else:
        identity["info_error"] = _s(str(server))[:200]
    if isinstance(repl, dict):
        for k in ("role", "master_replid"):
            if k in repl:
                identity[k] = repl[k]
    return identity


def identity_key(identity: dict[str, Any], where: str) -> str:
    """What the wrong-environment guard compares: the server's run_id, else its replication id."""
    return str(identity.get("run_id") or identity.get("master_replid") or where)


def _db_index(ep: config.Endpoint) -> int:
    raw = (ep.database or "0").strip("/") or "0"
    try:
        db = int(raw)
    except ValueError:
        raise UsageProblem(f"{'REDIS_URL' if ep.variable == 'REDIS_URL' else 'REDIS_DB'}: database index "
                           f"{raw!r} is not a number", hint="use e.g. redis://host:6379/0 or REDIS_DB=0") from None
    if db < 0:
        raise UsageProblem(f"Redis database index must be >= 0, got {db}")
    return db


def _connection_problem(exc: Exception, ep: config.Endpoint, run: Any) -> ConnectionProblem:
    where = ep.address
    text = str(exc)
    for secret in (ep.password,):
        if secret:
            text = text.replace(secret, "[REDACTED]")
    text = run.redactor.text(text)
    pw_var = "the password in REDIS_URL" if ep.variable == "REDIS_URL" else "REDIS_PASSWORD"
    if isinstance(exc, redis.exceptions.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        return ConnectionProblem(f"Redis at {where} (from {ep.variable}) refused the login: {text}",
                                 hint=f"check {pw_var} (and the user name, if any)")
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)):
        return ConnectionProblem(f"cannot reach Redis at {where} (from {ep.variable}): {text}",
                                 hint=f"is the tunnel up? check {ep.variable}")
    return ConnectionProblem(f"Redis at {where} (from {ep.variable}) failed at connect: {text}",
                             hint=f"is {ep.variable} pointing at a Redis server (through an open tunnel)?")


def connect(run: Any, *, socket_timeout_s: float = 5, connect_timeout_s: float = 3, alias: str = "redis",
            environ: dict[str, str] | None = None) -> RedisSession:
    """A guarded session from ``REDIS_URL`` or ``REDIS_*``: identity recorded, environment guard checked."""
    eps = config.endpoints(environ).get("redis")
    if not eps:
        raise UsageProblem("Redis is not configured", hint="set REDIS_URL (redis://[:PASSWORD@]HOST:PORT/DB) "
                                                          "or REDIS_HOST / REDIS_PORT / REDIS_DB / REDIS_PASSWORD")
    ep = eps[0]
    db = _db_index(ep)
    if ep.password and hasattr(run.redactor, "add_secret"):
        run.redactor.add_secret(ep.password)
    env = config.load_environ() if environ is None else environ
    tls = ep.variable == "REDIS_URL" and env.get("REDIS_URL", "").lower().startswith("rediss://")
    pool = ConnectionPool(
        connection_class=_GuardedSSLConnection if tls else _GuardedConnection,
        host=ep.host, port=ep.port, db=db, username=ep.user, password=ep.password,
        socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s,
        retry=Retry(NoBackoff(), 0),  # redis-py's default retries would turn "refused" into ~10 s
        protocol=2, pyx_write_allowed=bool(run.write_allowed),
    )  # fmt: skip
    client = GuardedRedis(connection_pool=pool)
    rec = _Recorder(run, alias, bool(run.write_allowed), ep.address, ep.variable)
    client._pyx = rec
    try:
        with rec.group("INFO", "INFO server; INFO replication", count_rows=False):
            identity = _server_identity(client, db)
    except ConnectionProblem as exc:
        pool.disconnect()
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        raise _connection_problem(cause, ep, run) from None
    except redis.exceptions.RedisError as exc:
        pool.disconnect()
        raise _connection_problem(exc, ep, run) from None
    where = ep.address
    run.add_target({"system": "redis", "alias": alias, "endpoint": {"host": ep.host, "port": ep.port, "db": db},
                    "identity": identity, "fingerprint": sha256_json(identity)[:16]})
    try:
        guard.check_identity(run.dir, run.session.env_label, "redis", identity_key(identity, where), where)
    except BaseException:
        pool.disconnect()
        raise
    return RedisSession(run, client, ep, db, alias, identity)


