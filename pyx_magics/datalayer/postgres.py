"""Recorded, read-only-by-default PostgreSQL access for pyx tasks (psycopg 3).

``connect(run)`` reaches the server named by ``DATABASE_URL`` or ``DB_*`` with every statement
bounded (``statement_timeout``, ``lock_timeout``, ``idle_in_transaction_session_timeout``) and
``default_transaction_read_only=on``. That GUC alone is not a guard (``BEGIN READ WRITE`` or
``SET default_transaction_read_only = off`` undo it, and admin functions such as
``pg_terminate_backend()`` work in a read-only transaction), so each call also runs in its own
transaction opened ``READ ONLY`` and every statement is checked *before it is sent*
(:func:`check_sql`): comments and literals are stripped, one statement per call, and
transaction control, role/characteristics changes, side-effecting functions, server-side
``COPY`` and DDL/DML are refused unless the task runs with ``--allow-write``. A role with only
SELECT grants is still the guard that holds against a user-defined function that writes.

Every statement is recorded in the run (``data_access``) and the server in ``targets``, after
the wrong-environment guard accepted its identity. Extracts use ``COPY ... TO STDOUT`` so the
CSV keeps the database's own text for every value (byte-identical to ``psql \\copy``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pyx_magics.core.errors import ConnectionProblem, PyxError, UnsafeOperation, UsageProblem
from pyx_magics.core.hashing import sha256_json
from pyx_magics.core.names import check_name
from pyx_magics.datalayer import config, guard

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

    from pyx_magics.core.redact import Redactor

__all__ = ["MAX_ROWS", "PgSession", "QueryTimeout", "Statement", "check_sql", "connect", "split_statements"]

MAX_ROWS = 100_000  #: default bound of a DataFrame; beyond it, use ``to_csv``
PROGRESS_AFTER_S = 2.0  #: a COPY running longer than this shows a progress bar on stderr
FLUSH_BYTES = 1 << 20  #: COPY rows are joined, redacted and written in blocks of about this size
WRITE_HINT = "to change data, run the task with `%%pyx_run --allow-write REASON`"


class QueryTimeout(PyxError, TimeoutError):
    """PostgreSQL cancelled a statement (``statement_timeout``/``lock_timeout``); the session is still usable."""


class Recorder(Protocol):
    """The part of a ``Run`` (or its child-process twin) the data layer writes into."""

    run_id: str
    dir: Path
    redactor: Redactor
    session: Any
    request: Any

    @property
    def write_allowed(self) -> bool: ...

    def declare_output(self, name: str, role: str | None = None) -> Path: ...

    def add_target(self, entry: dict[str, Any]) -> None: ...

    def add_access(self, entry: dict[str, Any]) -> None: ...


# ----------------------------------------------------------------------------- SQL checking


@dataclass(frozen=True)
class Token:
    """A lexical token. ``value``: a word lower-cased, an identifier's content, or the character."""

    kind: str  # word, ident, uident, string, number, param, op
    value: str
    start: int
    end: int


@dataclass(frozen=True)
class Statement:
    """One statement of a SQL text, without its ``;`` and surrounding comments."""

    text: str
    tokens: tuple[Token, ...]
    write: bool = False  # needs a read-write transaction (only possible with --allow-write)

    @property
    def first(self) -> str | None:
        """The leading keyword (after any opening parentheses), lower-cased."""
        for tok in self.tokens:
            if tok.kind == "op" and tok.value == "(":
                continue
            return tok.value if tok.kind == "word" else None
        return None

    def words(self) -> list[str]:
        return [t.value for t in self.tokens if t.kind == "word"]


_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_NUMBER = re.compile(r"0[xXoObB][0-9A-Fa-f_]+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?")
_DOLLAR = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_PARAM = re.compile(r"\$\d+")


def _unterminated(what: str) -> UsageProblem:
    return UsageProblem(f"the SQL has an unterminated {what}", hint="pyx checks every statement before sending it")


def _quoted_end(sql: str, i: int, quote: str, backslash: bool) -> int:
    """The index just after the literal opened by ``sql[i] == quote`` (doubled quotes escape)."""
    j = i + 1
    n = len(sql)
    while j < n:
        c = sql[j]
        if backslash and c == "\\":
            j += 2
        elif c == quote:
            if j + 1 < n and sql[j + 1] == quote:
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise _unterminated("quoted identifier" if quote == '"' else "string literal")


def tokenize(sql: str) -> list[Token]:
    """PostgreSQL tokens of ``sql`` with comments dropped and literals reduced to one token.

    Assumes ``standard_conforming_strings=on`` (pyx sets it at connect): only ``E'...'`` strings
    take backslash escapes.
    """
    toks: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):  # block comments nest in PostgreSQL
            depth, j = 1, i + 2
            while depth:
                a, b = sql.find("/*", j), sql.find("*/", j)
                if b < 0:
                    raise _unterminated("/* comment")
                if 0 <= a < b:
                    depth, j = depth + 1, a + 2
                else:
                    depth, j = depth - 1, b + 2
            i = j
        elif c == "'":
            j = _quoted_end(sql, i, "'", False)
            toks.append(Token("string", "", i, j))
            i = j
        elif c == '"':
            j = _quoted_end(sql, i, '"', False)
            toks.append(Token("ident", sql[i + 1:j - 1].replace('""', '"').lower(), i, j))
            i = j
        elif c == "$":
            if m := _PARAM.match(sql, i):
                toks.append(Token("param", m.group(), i, m.end()))
                i = m.end()
            elif m := _DOLLAR.match(sql, i):
                close = sql.find(m.group(), m.end())
                if close < 0:
                    raise _unterminated(f"{m.group()} dollar-quoted string")
                toks.append(Token("string", "", i, close + len(m.group())))
                i = close + len(m.group())
            else:
                toks.append(Token("op", c, i, i + 1))
                i += 1
        elif m := _WORD.match(sql, i):
            word, j = m.group().lower(), m.end()
            if j < n and sql[j] == "'" and word in ("e", "b", "x", "n"):
                k = _quoted_end(sql, j, "'", word == "e")
                toks.append(Token("string", "", i, k))
                i = k
            elif word == "u" and sql.startswith("&'", j):
                k = _quoted_end(sql, j + 1, "'", False)
                toks.append(Token("string", "", i, k))
                i = k
            elif word == "u" and sql.startswith('&"', j):
                k = _quoted_end(sql, j + 1, '"', False)
                toks.append(Token("uident", sql[j + 2:k - 1].lower(), i, k))
                i = k
            else:
                toks.append(Token("word", word, i, j))
                i = j
        elif m := _NUMBER.match(sql, i):
            toks.append(Token("number", m.group(), i, m.end()))
            i = m.end()
        else:
            toks.append(Token("op", c, i, i + 1))
            i += 1
    return toks


def split_statements(sql: str) -> list[Statement]:
    """The non-empty statements of ``sql`` (``;`` inside literals, comments or a ``BEGIN ATOMIC``
    function body does not split)."""
    stmts: list[Statement] = []
    current: list[Token] = []
    atomic = case = 0

    def emit() -> None:
        if current:
            stmts.append(Statement(sql[current[0].start:current[-1].end], tuple(current)))
            current.clear()

    for tok in tokenize(sql):
        if tok.kind == "op" and tok.value == ";" and not atomic:
            emit()
            continue
        if tok.kind == "word":
            if tok.value == "atomic" and current and current[-1].kind == "word" and current[-1].value == "begin" \
                    and len(current) > 1:
                atomic += 1
            elif tok.value == "case" and atomic:
                case += 1
            elif tok.value == "end" and atomic:
                if case:
                    case -= 1
                else:
                    atomic -= 1
        current.append(tok)
    emit()
    return stmts


_READ_FIRST = frozenset({"select", "with", "values", "table", "show", "explain", "set", "reset"})
COPYABLE_FIRST = frozenset({"select", "with", "values", "table"})
_TX_CONTROL = frozenset({"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"})
_DML = frozenset({"insert", "update", "delete", "merge", "truncate"})
_GUARDED_SETTINGS = frozenset({
    "default_transaction_read_only", "transaction_read_only", "role", "authorization", "session_authorization",
    "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout",
    "application_name", "standard_conforming_strings",
})
_ALWAYS_FUNCS = frozenset({"set_config", "lo_import", "lo_export"})
_RO_FUNCS = frozenset({
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_switch_wal",
    "pg_promote", "pg_notify", "pg_logical_emit_message", "pg_log_backend_memory_contexts",
    "pg_import_system_collations", "pg_start_backup", "pg_stop_backup", "nextval", "setval",
    "txid_current", "pg_current_xact_id", "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
    "cursor_to_xml", "cursor_to_xmlschema", "pg_read_file", "pg_read_binary_file",
})
_RO_FUNC_PREFIXES = ("pg_advisory", "pg_try_advisory", "dblink", "pg_stat_reset", "pg_create_", "pg_drop_",
                     "pg_replication_", "pg_wal_replay_", "pg_backup_", "pg_file_", "lo_")
_PROCEDURAL = {"do": "DO runs procedural code pyx cannot check", "call": "CALL runs a procedure pyx cannot check"}


def _called(stmt: Statement) -> Iterator[Token]:
    """Tokens in function-call position (a name followed by ``(``)."""
    toks = stmt.tokens
    for a, b in zip(toks, toks[1:], strict=False):
        if a.kind in ("word", "ident", "uident") and b.kind == "op" and b.value == "(":
            yield a


def _always_problem(stmt: Statement) -> tuple[str, str] | None:
    """Why ``stmt`` is refused even with ``--allow-write`` (message, hint), or None."""
    first, words = stmt.first, stmt.words()
    if first in _TX_CONTROL or (first == "prepare" and words[1:2] == ["transaction"]):
        return (f"{(first or '').upper()} is not allowed: pyx manages transactions (each call runs in its own, "
                "committed when it succeeds, rolled back when it fails)", "leave transaction control out of the SQL")
    if first in ("set", "reset"):
        named = {t.value for t in stmt.tokens if t.kind in ("word", "ident")}
        hit = sorted(named & _GUARDED_SETTINGS)
        if first == "reset" and "all" in words[1:2]:
            hit = ["all"]
        if hit or "write" in words:
            what = " ".join(hit) if hit else "READ WRITE"
            return (f"{first.upper()} {what} would change this session's read-only, role or timeout settings",
                    "pass statement_timeout_s=/lock_timeout_s= to pyx.db(); writes need `--allow-write REASON`")
    if first == "copy":
        toks = stmt.tokens
        server_side = "program" in words or any(
            a.kind == "word" and a.value in ("to", "from") and b.kind == "string" for a, b in zip(toks, toks[1:], strict=False))
        if server_side:
            return ("server-side COPY to/from a file or PROGRAM runs on the database server: never from pyx",
                    "use pyx.db().to_csv(sql, label), which streams COPY ... TO STDOUT to a declared output")
        return "COPY is not run directly", "use pyx.db().to_csv(sql, label) for extracts"
    for tok in _called(stmt):
        if tok.kind == "uident":
            return "a Unicode-escaped function name cannot be checked", "spell the function name plainly"
        if tok.value in _ALWAYS_FUNCS:
            return (f"{tok.value}() is refused: it changes session settings or touches the server's files",
                    "pass settings to pyx.db(); read files on your side")
    return None


# first words of PostgreSQL commands that are not reads (the reads are _READ_FIRST)
_SQL_COMMANDS = frozenset(["abort", "alter", "analyze", "begin", "call", "checkpoint", "close", "cluster", "comment", "commit", "copy", "create", "deallocate", "declare", "delete", "discard", "do", "drop", "end", "execute", "explain", "fetch", "grant", "import", "insert", "listen", "load", "lock", "merge", "move", "notify", "prepare", "reassign", "refresh", "reindex", "release", "reset", "revoke", "rollback", "savepoint", "security", "select", "set", "show", "start", "table", "truncate", "unlisten", "update", "vacuum", "values", "with"])


def _readonly_problem(stmt: Statement) -> tuple[str, str] | None:
    """Why ``stmt`` needs ``--allow-write`` (message, hint), or None if it only reads."""
    first, words = stmt.first, stmt.words()
    if first is None:
        return "cannot tell what this statement does (it does not start with a keyword)", WRITE_HINT
    if first in _PROCEDURAL:
        return f"{_PROCEDURAL[first]}; this session is read-only", WRITE_HINT
    if first not in _READ_FIRST:
        if first not in _SQL_COMMANDS:
            return (f"{first.upper()} is not a SQL command pyx knows (a typo?); nothing was sent",
                    "read-only sessions run SELECT, WITH, VALUES, TABLE, SHOW and EXPLAIN")
        return f"{first.upper()} changes the database or the session; this session is read-only", WRITE_HINT
    toks = stmt.tokens
    for a, b in zip(toks, toks[1:], strict=False):
        if a.kind == b.kind == "word" and a.value == "for" and b.value in ("update", "share", "no", "key"):
            return "SELECT ... FOR UPDATE/SHARE takes row locks; this session is read-only", WRITE_HINT
    for w in words:
        if w in _DML:
            return (f"the statement contains {w.upper()}, which changes data; this session is read-only",
                    f'{WRITE_HINT} (if {w} is a column name, quote it: "{w}")')
        if w == "into":
            return "SELECT ... INTO creates a table; this session is read-only", WRITE_HINT
    for tok in _called(stmt):
        if tok.value in _RO_FUNCS or tok.value.startswith(_RO_FUNC_PREFIXES):
            return f"{tok.value}() has side effects (or runs SQL pyx cannot check); this session is read-only", WRITE_HINT
    return None


def check_sql(sql: str, *, write_allowed: bool) -> list[Statement]:
    """The statements of ``sql``, each marked ``write`` if it needs a read-write transaction.

    Raises :class:`UnsafeOperation` for what may not be sent: in read-only mode more than one
    statement, or anything :func:`_readonly_problem` names; in any mode transaction control,
    changes of the session's read-only/role/timeout settings, ``set_config()``, server-side
    ``COPY`` and large-object file I/O.
    """
    stmts = split_statements(sql)
    if not stmts:
        raise UsageProblem("empty SQL statement")
    if len(stmts) > 1 and not write_allowed:
        raise UnsafeOperation(f"{len(stmts)} statements in one call; a read-only session runs one per call",
                              hint="split them into separate calls")
    out = []
    for stmt in stmts:
        if problem := _always_problem(stmt):
            raise UnsafeOperation(problem[0], hint=problem[1])
        problem = _readonly_problem(stmt)
        if problem and not write_allowed:
            raise UnsafeOperation(problem[0], hint=problem[1])
        out.append(replace(stmt, write=problem is not None))
    return out


# ----------------------------------------------------------------------------- connecting


_FINGERPRINT_SQL = """SELECT current_database() AS database, current_user AS "user", now()::text AS now,
  current_setting('TimeZone') AS timezone, version() AS version,
  host(inet_server_addr()) AS server_addr, inet_server_port() AS server_port,
  pg_is_in_recovery() AS in_recovery,
  extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_lag_s,
  current_setting('transaction_read_only') AS transaction_read_only,
  current_setting('default_transaction_read_only') AS default_transaction_read_only,
  current_setting('statement_timeout') AS statement_timeout,
  current_setting('application_name') AS application_name,
  current_setting('server_version') AS server_version"""
_SYSID_SQL = """,
  CASE WHEN has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')
       THEN (SELECT system_identifier::text FROM pg_catalog.pg_control_system()) END AS system_identifier"""
_REPLICA_SQL = """SELECT pg_is_in_recovery() AS in_recovery,
  CASE WHEN pg_is_in_recovery() THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END
    AS replay_lag_s,
  pg_last_xact_replay_timestamp()::text AS last_replay_at,
  CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8 END
    AS replay_gap_bytes"""
_IDENTITY_FIELDS = ("database", "user", "server_addr", "server_port", "version", "system_identifier", "in_recovery")


def _label(label: str) -> str:
    check_name(label, "label")
    if len(label) > 60:  # db_rows.<label>.<run_id>.csv must stay a valid 100-character name
        raise UsageProblem(f"label {label!r} is longer than 60 characters")
    return label


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or not math.isfinite(value):
        raise UsageProblem(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _endpoint(environ: Mapping[str, str] | None) -> config.Endpoint:
    found = config.endpoints(environ).get("postgres")
    if not found:
        raise UsageProblem("no PostgreSQL is configured",
                           hint="set DATABASE_URL (postgresql://user@host:port/db) or DB_HOST/DB_PORT/DB_NAME/DB_USER/"
                                "DB_PASSWORD, in the environment or a .env file")
    return found[0]


def connect(run: Recorder, *, statement_timeout_s: float = 30, lock_timeout_s: float = 5,
            connect_timeout_s: float = 3, alias: str = "postgres", max_rows: int = MAX_ROWS,
            environ: Mapping[str, str] | None = None) -> PgSession:
    """A :class:`PgSession` to the configured PostgreSQL, recorded as target ``alias`` of ``run``.

    Read-only unless ``run.write_allowed``. Raises :class:`ConnectionProblem` (server unreachable,
    login refused) or ``WrongEnvironment`` (server confirmed under another environment label).
    """
    if not isinstance(max_rows, int) or max_rows < 1:
        raise UsageProblem(f"max_rows must be a positive integer, got {max_rows!r}")
    session = PgSession(run, _endpoint(environ), alias=check_name(alias, "alias"),
                        statement_timeout_s=_positive(statement_timeout_s, "statement_timeout_s"),
                        lock_timeout_s=_positive(lock_timeout_s, "lock_timeout_s"),
                        connect_timeout_s=_positive(connect_timeout_s, "connect_timeout_s"), max_rows=max_rows)
    session.open()
    return session


@dataclass
class _Pending:
    entries: list[dict[str, Any]] = field(default_factory=list)


class PgSession:
    """A recorded PostgreSQL session. Each call runs in its own transaction (read-only unless
    the statement writes and the task has ``--allow-write``); use it as a context manager or
    call :meth:`close`. A lost connection is reopened (and re-identified) by the next call."""

    def __init__(self, run: Recorder, endpoint: config.Endpoint, *, alias: str, statement_timeout_s: float,
                 lock_timeout_s: float, connect_timeout_s: float, max_rows: int) -> None:
        self.run = run
        self.endpoint = endpoint
        self.alias = alias
        self.statement_timeout_s = statement_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_rows = max_rows
        self.identity: dict[str, Any] = {}
        self.identity_key = ""
        self.fingerprint_hash: str | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._pending: _Pending | None = None
        self._cursors = 0

    def __repr__(self) -> str:  # never shows the password
        ep = self.endpoint
        state = "closed" if self._conn is None else "open"
        return f"<PgSession {self.alias} {ep.user or ''}@{ep.address}/{ep.database or ''} {state}>"

    def __enter__(self) -> PgSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def write_allowed(self) -> bool:
        return bool(self.run.write_allowed)

    # -- connection

    def _options(self) -> str:
        ms = {name: int(round(value * 1000)) for name, value in (
            ("statement_timeout", self.statement_timeout_s), ("lock_timeout", self.lock_timeout_s),
            ("idle_in_transaction_session_timeout", max(60.0, 2 * self.statement_timeout_s)))}
        topic = re.sub(r"[^A-Za-z0-9_.-]", "_", str(getattr(self.run.session, "topic", "investigation")))
        settings = {"default_transaction_read_only": "on", **ms, "standard_conforming_strings": "on",
                    "application_name": f"pyx-{topic}"[:63]}
        return " ".join(f"-c {k}={v}" for k, v in settings.items())

    def open(self) -> None:
        """Connect, fingerprint the server, record the target and apply the environment guard."""
        import psycopg

        ep = self.endpoint
        extra = dict(ep.extra)
        options = " ".join(filter(None, [extra.pop("options", ""), self._options()]))  # ours win: they come last
        params: dict[str, Any] = {"host": ep.host, "port": ep.port, "dbname": ep.database, "user": ep.user,
                                  "password": ep.password}
        params = {k: v for k, v in params.items() if v is not None}
        params |= extra | {"connect_timeout": max(2, math.ceil(self.connect_timeout_s)), "options": options,
                           "keepalives": 1, "keepalives_idle": 30}
        try:
            # no automatic prepared statements: they break behind a transaction-pooling pgbouncer
            conn = psycopg.connect(autocommit=False, prepare_threshold=None, **params)
        except psycopg.Error as exc:
            raise self._connect_error(exc) from None
        self._conn = conn
        try:
            facts = self._fingerprint_query()
            self.identity = {k: facts.get(k) for k in _IDENTITY_FIELDS}
            addr = f"{facts.get('server_addr') or ep.host}:{facts.get('server_port') or ep.port}"
            self.identity_key = str(facts.get("system_identifier") or
                                    f"{facts.get('version')}|{facts.get('database')}|{addr}")
            self.fingerprint_hash = sha256_json({k: self.identity[k] for k in _IDENTITY_FIELDS
                                                 if k != "in_recovery"})[:16]
            self.run.add_target({
                "system": "postgres", "alias": self.alias,
                "endpoint": {"host": ep.host, "port": ep.port, "variable": ep.variable, "database": ep.database,
                             "user": ep.user},
                "identity": self.identity, "identity_key": self.identity_key, "fingerprint": self.fingerprint_hash,
                "settings": {"read_only": not self.write_allowed, "statement_timeout_s": self.statement_timeout_s,
                             "lock_timeout_s": self.lock_timeout_s},
            })
            guard.check_identity(self.run.dir, self.run.session.env_label, "postgres", self.identity_key, ep.address)
        except BaseException:
            self.close()
            raise

    def _secret_free(self, text: str) -> str:
        if self.endpoint.password:
            text = text.replace(self.endpoint.password, "[REDACTED]")
        return self.run.redactor.text(text)

    def _connect_error(self, exc: BaseException) -> ConnectionProblem:
        """A clear error that never passes psycopg's message (which may hold the DSN) through raw."""
        ep = self.endpoint
        where = f"PostgreSQL at {ep.address} (from {ep.variable})"
        raw = str(exc)
        low = raw.lower()
        tunnel = (f"is the tunnel up (ssh -L / kubectl port-forward to port {ep.port})? "
                  f"is {ep.variable} right?")
        if "password" in low or "authentication failed" in low or "fe_sendauth" in low:
            return ConnectionProblem(f"{where} refused the login of user {ep.user!r}: authentication failed",
                                     hint="check the password (DB_PASSWORD or the one in DATABASE_URL)")
        if "does not exist" in low:
            thing = "database" if "database" in low else "role"
            name = ep.database if thing == "database" else ep.user
            return ConnectionProblem(f"{where}: {thing} {name!r} does not exist",
                                     hint=f"check {ep.variable} (DB_NAME/DB_USER or the URL path and user)")
        if "pg_hba" in low:
            return ConnectionProblem(f"{where} does not accept this user/database from this host (pg_hba.conf)",
                                     hint="ask the database owner, or connect through the usual bastion")
        if "timeout" in low or "timed out" in low:
            return ConnectionProblem(f"no answer from {where} within {self.connect_timeout_s:g} s", hint=tunnel)
        if "refused" in low or "could not connect" in low or "closed the connection" in low \
                or "no route" in low or "reset by peer" in low or "translate host" in low:
            return ConnectionProblem(f"nothing answered as {where}", hint=tunnel)
        detail = self._secret_free(raw.strip().splitlines()[-1] if raw.strip() else type(exc).__name__)
        return ConnectionProblem(f"could not connect to {where}: {detail}", hint=tunnel)

    def _ensure(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = None
            self.open()
        assert self._conn is not None
        return self._conn

    def close(self) -> None:
        """Roll back anything open and close the connection. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                conn.rollback()
            with contextlib.suppress(Exception):
                conn.close()

    # -- transactions, errors and recording

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[psycopg.Connection[Any]]:
        """One transaction: READ ONLY REPEATABLE READ for reads (one snapshot for every statement
        of the call), READ WRITE for writes; committed at success, rolled back otherwise."""
        from psycopg import IsolationLevel

        conn = self._ensure()
        conn.read_only = not write
        conn.isolation_level = None if write else IsolationLevel.REPEATABLE_READ
        pending = self._pending = _Pending()
        try:
            yield conn
            conn.commit()
        except BaseException as exc:
            self._recover()
            for entry in pending.entries:
                entry.setdefault("error", type(exc).__name__)
            self._flush(pending)
            mapped = self._map_error(exc)
            if mapped is exc:
                raise
            raise mapped from None
        self._flush(pending)

    def _flush(self, pending: _Pending) -> None:
        for entry in pending.entries:
            self.run.add_access(entry)
        pending.entries.clear()
        self._pending = None

    def _recover(self) -> None:
        """After a failure or an interrupt: roll back, or drop a connection in an unknown state."""
        from psycopg.pq import TransactionStatus

        conn = self._conn
        if conn is None or conn.closed:
            self._conn = None
            return
        try:
            if conn.info.transaction_status == TransactionStatus.ACTIVE:
                # interrupted outside psycopg's own Ctrl-C handling (e.g. a task timeout): cancel, then drop
                conn.cancel_safe(timeout=3)
                raise RuntimeError("connection left active")
            conn.rollback()
        except BaseException:
            self._conn = None
            with contextlib.suppress(Exception):
                conn.close()

    def _map_error(self, exc: BaseException) -> BaseException:
        import psycopg
        from psycopg import errors as pe

        if isinstance(exc, pe.QueryCanceled):
            if "statement timeout" in str(exc):
                return QueryTimeout(f"PostgreSQL cancelled the statement after statement_timeout="
                                    f"{self.statement_timeout_s:g} s; the session is still usable",
                                    hint="narrow the query (WHERE on an indexed column, LIMIT), use to_csv for "
                                         "extracts, or pass statement_timeout_s= to pyx.db()")
            return QueryTimeout(f"PostgreSQL cancelled the statement ({self._secret_free(str(exc).strip())})")
        if isinstance(exc, pe.LockNotAvailable):
            return QueryTimeout(f"gave up waiting for a lock after lock_timeout={self.lock_timeout_s:g} s",
                                hint="another transaction holds the lock; retry later or pass lock_timeout_s=")
        if isinstance(exc, pe.ReadOnlySqlTransaction):
            return UnsafeOperation(f"the server refused a write in this read-only session: "
                                   f"{self._secret_free(str(exc).strip())}", hint=WRITE_HINT)
        if isinstance(exc, psycopg.OperationalError) and self._conn is None:
            ep = self.endpoint
            lines = str(exc).strip().splitlines()  # e.g. "terminating connection due to administrator command"
            why = f": {self._secret_free(lines[0].strip())}" if lines else ""
            return ConnectionProblem(f"lost the connection to PostgreSQL at {ep.address} (from {ep.variable}){why}",
                                     hint="is the tunnel still up and the server running? the next call reconnects")
        return exc

    @contextlib.contextmanager
    def _record(self, op: str, statement: str, write: bool) -> Iterator[dict[str, Any]]:
        """Time one statement; its access entry is written when the transaction ends."""
        entry: dict[str, Any] = {"target": self.alias, "op": op, "statement": statement, "rows": None,
                                 "duration_ms": None}
        if write:
            entry["write"] = True
        t0 = time.perf_counter()
        try:
            yield entry
        finally:
            entry["duration_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            if self._pending is not None:
                self._pending.entries.append(entry)
            else:
                self.run.add_access(entry)

    def _check(self, sql: Any, *, single: bool = False, copyable: bool = False) -> list[Statement]:
        text = self._as_text(sql)
        stmts = check_sql(text, write_allowed=self.write_allowed)
        if (single or copyable) and len(stmts) > 1:
            raise UsageProblem(f"{len(stmts)} statements in one call; this call takes one")
        if copyable and stmts[0].first not in COPYABLE_FIRST and not stmts[0].write:
            raise UsageProblem(f"{(stmts[0].first or '?').upper()} cannot be extracted with COPY",
                               hint="to_csv and labels take a SELECT, WITH, VALUES or TABLE query")
        return stmts

    def _as_text(self, sql: Any) -> str:
        if isinstance(sql, str):
            return sql
        if hasattr(sql, "as_string"):  # psycopg.sql.Composable
            return str(sql.as_string(self._ensure()))
        raise UsageProblem(f"SQL must be a str or psycopg.sql object, not {type(sql).__name__}")

    def _literal(self, text: str, params: Any) -> str:
        """``text`` with ``params`` bound client-side (COPY cannot take server-side parameters)."""
        if params is None:
            return text
        import psycopg

        return psycopg.ClientCursor(self._ensure()).mogrify(text, params)

    # -- reading

    def query_df(self, sql: Any, params: Sequence[Any] | Mapping[str, Any] | None = None, *,
                 label: str | None = None, limit: int | None = None) -> pd.DataFrame:
        """The result as a DataFrame (at most ``max_rows`` rows unless ``limit`` truncates it).

        With ``label`` the same rows (same snapshot) are also written by COPY to
        ``db_rows.<label>.<run_id>.csv``, in the database's own text, and declared.
        """
        import pandas as pd

        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise UsageProblem(f"limit must be a non-negative integer, got {limit!r}")
        if label is not None:
            label = _label(label)
        stmt = self._check(sql, single=True, copyable=label is not None)[0]
        if label is not None and stmt.write:  # the CSV would run the write a second time
            raise UsageProblem("query_df(label=...) takes a read query",
                               hint="for the rows a write returns, use to_csv('UPDATE ... RETURNING ...', label)")
        literal = self._literal(stmt.text, params)
        want = limit + 1 if limit is not None else self.max_rows + 1
        with self._transaction(stmt.write) as conn:
            with self._record("query", literal, stmt.write) as entry:
                if stmt.first in COPYABLE_FIRST and not stmt.write:
                    self._cursors += 1  # a server-side cursor: only the rows asked for cross the wire
                    cur: Any = conn.cursor(name=f"pyx_{self._cursors}")
                else:
                    cur = conn.cursor()
                cur.execute(stmt.text, params)
                rows = cur.fetchmany(want) if cur.description else []
                columns = [c.name for c in cur.description or []]
                if not stmt.write:
                    cur.close()
                entry["rows"] = min(len(rows), limit) if limit is not None else len(rows)
                if limit is not None and len(rows) > limit:
                    rows = rows[:limit]
                    entry["truncated"] = True
                elif limit is None and len(rows) > self.max_rows:
                    raise UsageProblem(f"the query returned more than {self.max_rows:,} rows, too many for a DataFrame",
                                       hint="use pyx.db().to_csv(sql, label) for big extracts, pass limit=N, "
                                            "or aggregate in SQL")
            if label is not None:
                copy_sql = literal if limit is None else f"SELECT * FROM (\n{literal}\n) AS pyx_q LIMIT {int(limit)}"
                self._copy_out(conn, copy_sql, label, stmt.write)
        if not columns:
            return pd.DataFrame()
        return pd.DataFrame.from_records(rows, columns=columns) if rows else pd.DataFrame(columns=columns)

    def to_csv(self, sql: Any, label: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Path:
        """Stream ``COPY (sql) TO STDOUT (FORMAT csv, HEADER)`` to ``db_rows.<label>.<run_id>.csv``
        (bounded memory, values in the database's own text, redacted); returns the path."""
        label = _label(label)
        stmt = self._check(sql, copyable=True)[0]
        literal = self._literal(stmt.text, params)
        with self._transaction(stmt.write) as conn:
            return self._copy_out(conn, literal, label, stmt.write)

    def _copy_out(self, conn: psycopg.Connection[Any], query: str, label: str, write: bool) -> Path:
        path = self.run.declare_output(f"db_rows.{label}.{self.run.run_id}.csv")
        partial = path.with_name(f".{path.name}.partial")
        statement = f"COPY (\n{query}\n) TO STDOUT WITH (FORMAT csv, HEADER)"
        try:
            with self._record("copy", statement, write) as entry:
                entry["output"] = path.name
                cur = conn.cursor()
                with open(partial, "wb") as sink, cur.copy(statement):
                    rows = _drain_copy(conn, sink, self.run.redactor, label)
                if rows is None:
                    rows = cur.rowcount if cur.rowcount >= 0 else None
                entry["rows"] = rows
            os.replace(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return path

    def rows_near_day_boundary(self, table: str, ts_column: str, tz: str, *, window_minutes: float = 5,
                               where: str | None = None, label: str | None = None,
                               limit: int | None = None) -> pd.DataFrame:
        """Rows of ``table`` whose ``ts_column``, read in time zone ``tz``, is within ``window_minutes``
        of local midnight (either side), ordered by it, with ``pyx_local_ts`` and
        ``pyx_minutes_from_midnight`` (negative before midnight) added; also written to
        ``db_rows.<label>.<run_id>.csv``. A ``timestamp`` (without time zone) column is read in the
        session's TimeZone. ``where`` is an extra SQL condition (checked like any statement)."""
        from psycopg import sql as s

        if not isinstance(table, str) or not all(table.split(".")) or table.count(".") > 2:
            raise UsageProblem(f"table must be 'name' or 'schema.name', got {table!r}")
        if not isinstance(ts_column, str) or not ts_column:
            raise UsageProblem(f"ts_column must be a column name, got {ts_column!r}")
        if not isinstance(tz, str) or not tz.strip():
            raise UsageProblem(f"tz must be a time zone name such as 'Europe/Berlin', got {tz!r}")
        window = _positive(window_minutes, "window_minutes")
        if window >= 720:
            raise UsageProblem(f"window_minutes must be below 720 (12 h), got {window_minutes!r}")
        label = label or "day_boundary_" + re.sub(r"[^A-Za-z0-9_-]", "_", table)[:40]
        local = s.SQL("(({col})::timestamptz AT TIME ZONE {tz})").format(col=s.Identifier(ts_column), tz=s.Literal(tz))
        secs = s.SQL("extract(epoch FROM {local}::time)").format(local=local)
        query = s.SQL(
            "SELECT t.*, {local} AS pyx_local_ts,\n"
            "  round((CASE WHEN {secs} >= 43200 THEN {secs} - 86400 ELSE {secs} END)::numeric / 60, 2) AS pyx_minutes_from_midnight\n"
            "FROM {table} AS t\nWHERE ({secs} <= {w} OR {secs} >= 86400 - {w}){extra}\nORDER BY {col}"
        ).format(local=local, secs=secs, table=s.Identifier(*table.split(".")), w=s.Literal(round(window * 60, 3)),
                 col=s.Identifier(ts_column), extra=s.SQL("\n  AND ({})").format(s.SQL(where)) if where else s.SQL(""))
        return self.query_df(query, label=label, limit=limit)

    def _fetch_one(self, sql: str) -> dict[str, Any]:
        from psycopg.rows import dict_row

        with self._transaction(False) as conn, self._record("query", sql, False) as entry:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(sql).fetchone() or {}
            entry["rows"] = 1 if row else 0
        return dict(row)

    def _fingerprint_query(self) -> dict[str, Any]:
        from psycopg import errors as pe

        try:
            return self._fetch_one(_FINGERPRINT_SQL + _SYSID_SQL)
        except (pe.InsufficientPrivilege, pe.UndefinedFunction):  # a role (or server) without pg_control_system
            return {**self._fetch_one(_FINGERPRINT_SQL), "system_identifier": None}

    def fingerprint(self) -> dict[str, Any]:
        """What server this is, in one round trip (plus one if ``pg_control_system`` is not readable)."""
        facts = self._fingerprint_query()
        return {**facts, "identity_key": self.identity_key, "fingerprint": self.fingerprint_hash,
                "endpoint": {"host": self.endpoint.host, "port": self.endpoint.port,
                             "variable": self.endpoint.variable}}

    def replica_lag(self) -> dict[str, Any]:
        """``in_recovery``; on a standby ``replay_lag_s`` (time since the last replayed transaction,
        which also grows while the primary is idle) and ``replay_gap_bytes`` (received, not yet replayed)."""
        return self._fetch_one(_REPLICA_SQL)

    # -- writing

    def execute(self, sql: Any, params: Sequence[Any] | Mapping[str, Any] | None = None) -> int:
        """Run a write (only with ``--allow-write``), committed when it succeeds; returns the row count."""
        if not self.write_allowed:
            raise UnsafeOperation("pyx.db().execute() is for writes and this task is read-only", hint=WRITE_HINT)
        stmts = self._check(sql)
        text = stmts[0].text if len(stmts) == 1 else ";\n".join(st.text for st in stmts)
        write = any(st.write for st in stmts)
        with self._transaction(write) as conn, self._record("execute", self._literal(text, params), write) as entry:
            cur = conn.cursor()
            cur.execute(text, params)
            entry["rows"] = cur.rowcount if cur.rowcount >= 0 else None
        return int(entry["rows"] or 0)


def _copy_result(conn: Any) -> int | None:
    """After ``get_copy_data`` returned -1: read the COPY's final result (its row count) and
    what follows; raise the server's error if the COPY failed."""
    from psycopg import errors as pe
    from psycopg import pq

    pgconn = conn.pgconn
    results = []
    while True:
        while pgconn.is_busy():
            _wait_readable(pgconn)
        res = pgconn.get_result()
        if res is None:
            break
        results.append(res)
    for res in results:
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise pe.error_from_result(res, encoding=conn.info.encoding)
    return results[0].command_tuples if results else None


def _wait_readable(pgconn: Any) -> None:
    """Wait (Ctrl-C raises here) until the server sent more, and let libpq read it."""
    import select

    select.select([pgconn.socket], [], [], 0.2)
    pgconn.consume_input()


def _drain_copy(conn: Any, sink: Any, redactor: Redactor, label: str) -> int | None:
    """Write COPY rows to ``sink`` in blocks as they arrive, redacted per block of whole rows
    (every CopyData message is one whole row); return the row count.

    psycopg's ``for block in copy`` costs a wait cycle per row (1M rows: ~1.6 s against psql's
    ~0.9 s), so rows libpq has buffered are taken with non-blocking ``get_copy_data``, waiting on
    the socket only when nothing is buffered. An exception (Ctrl-C, a task timeout) propagates
    to ``cursor.copy()``'s exit, which cancels the query and consumes the rest.
    """
    pgconn = conn.pgconn
    get = pgconn.get_copy_data
    buf = bytearray()
    messages = reported = 0
    started = time.monotonic()
    bar: Any = None
    rows: int | None = None

    def flush() -> None:
        nonlocal bar, reported
        if buf:
            sink.write(redactor.bytes(bytes(buf)))
            buf.clear()
        done = max(0, messages - 1)  # the first message is the header
        if bar is None and time.monotonic() - started > PROGRESS_AFTER_S:
            from tqdm import tqdm

            bar = tqdm(desc=f"COPY {label}", unit=" rows", file=sys.stderr, mininterval=0.5, initial=done)
            reported = done
        elif bar is not None:
            bar.update(done - reported)
            reported = done

    try:
        while True:
            nbytes, data = get(1)
            if nbytes > 0:
                buf += data
                messages += 1
                if len(buf) >= FLUSH_BYTES:
                    flush()
            elif nbytes == 0:
                _wait_readable(pgconn)
            else:  # the end (or an error): read the final result
                rows = _copy_result(conn)
                break
        flush()
    finally:
        if bar is not None:
            bar.close()
    return rows
