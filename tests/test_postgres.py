"""pyx.db(): read-only by default, bounded, recorded, and extracts that keep the database's text.

Server tests run against the local PostgreSQL (a fresh database each) and read the truth back
with raw psycopg, independently of pyx.
"""

from __future__ import annotations

import _thread
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from pyx_magics.core.errors import ConnectionProblem, UnsafeOperation, UsageProblem, WrongEnvironment
from pyx_magics.datalayer import guard
from pyx_magics.datalayer import postgres as pg
from pyx_magics.datalayer.postgres import QueryTimeout, check_sql, connect
from pyx_magics.execute import in_process
from pyx_magics.runner import Run, Session, TaskRequest, open_run, run_task

SETUP = """
CREATE TABLE t (id int PRIMARY KEY, amount numeric(10,2), ts timestamptz, note text);
INSERT INTO t VALUES
  (1, 896.60, '2024-03-01 12:00:00+00', 'plain'),
  (2, 0.50, '2024-03-01 23:58:30.123456+00', 'comma, "quote" and
newline'),
  (3, NULL, NULL, NULL),
  (4, -12.00, '1999-12-31 23:59:59+05:30', 'ünïcødé ✓');
"""


def raw_copy(url: str, query: str) -> bytes:
    """What PostgreSQL itself sends for ``COPY (query) TO STDOUT (FORMAT csv, HEADER)``."""
    out = bytearray()
    with psycopg.connect(url) as conn, conn.cursor().copy(
            f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
        for block in copy:
            out += block
    return bytes(out)


def raw_one(url: str, query: str) -> tuple:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def db_url(service_env: dict[str, str], pg_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """DATABASE_URL of a fresh database holding table ``t``."""
    monkeypatch.setenv("DATABASE_URL", pg_db)
    with psycopg.connect(pg_db, autocommit=True) as conn:
        conn.execute(SETUP)
    return pg_db


def new_run(tmp_path: Path, label: str = "local", allow_write: str | None = None) -> Run:
    session = Session.start(tmp_path / "inv", "t1", label, resume=False)
    return open_run(session, TaskRequest("q", "pass", allow_write=allow_write))


def with_login(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}").geturl()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- checking SQL (no server)

REFUSED_READ_ONLY = [
    "update t set amount = 0",
    "BEGIN READ WRITE",
    "start transaction read write",
    "SET default_transaction_read_only = off",
    "set session default_transaction_read_only to off",
    'SET "transaction_read_only" = off',
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "set transaction read write",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "set statement_timeout = 0",
    "RESET ALL",
    "reset role",
    "select set_config('default_transaction_read_only', 'off', false)",
    "select pg_catalog.set_config('role', 'x', false)",
    "select pg_terminate_backend(pid) from pg_stat_activity",
    'select "pg_terminate_backend"(42)',
    "SELECT/**/pg_cancel_backend (42)",
    "select pg_advisory_lock(1)",
    "select pg_try_advisory_xact_lock(1)",
    "select pg_reload_conf()",
    "select pg_rotate_logfile()",
    "select lo_import('/etc/passwd')",
    "select lo_export(1, '/tmp/x')",
    "select * from dblink('host=x', 'delete from t') as r(x int)",
    "select query_to_xml('delete from t', true, true, '')",
    "select nextval('s')",
    "copy t to '/tmp/t.csv'",
    "COPY (select 1) TO PROGRAM 'id'",
    "copy t to stdout",
    "do $$ begin delete from t; end $$",
    "CALL cleanup()",
    "commit",
    "ROLLBACK",
    "savepoint a",
    "select 1; delete from t",
    "select 1 /* ; */ ; delete from t",
    "select 1 -- comment\n; delete from t",
    "select 'a;b'; drop table t",
    "with d as (delete from t returning *) select * from d",
    "explain analyze delete from t",
    "select * from t for update",
    "select * from t for no key update",
    "select * into t2 from t",
    "insert into t values (9)",
    "merge into t using u on true when matched then delete",
    "truncate t",
    "create table x (a int)",
    "alter table t add column b int",
    "drop table t",
    "grant select on t to public",
    "vacuum t",
    "analyze t",
    "lock table t",
    "notify ch",
    "prepare p as select 1",
    "(update t set id = 1)",
    "select U&\"\\0070g_terminate_backend\"(1)",
]

ALLOWED_READ_ONLY = [
    "select 1",
    "  -- leading comment\n select 1;  ",
    "select 'delete from t; drop table t' as s -- update t",
    "select $$update t$$, $tag$ ; commit; $tag$",
    "select E'it\\'s; delete from t' as s",
    "select /* nested /* delete */ still comment; update */ 1",
    'select "update", "delete" from (select 1 as "update", 2 as "delete") q',
    "with x as (select 1 as a) select * from x",
    "values (1), (2)",
    "table t",
    "show TimeZone",
    "explain select * from t",
    "set TimeZone = 'UTC'",
    "(select 1) union (select 2)",
    "select substring('abc' for 2) as key",
    "select pg_sleep(0.01)",
    "select * from t where note = %s and id = %(id)s",
]


@pytest.mark.parametrize("sql", REFUSED_READ_ONLY)
def test_read_only_sessions_refuse_writes_and_escape_tricks(sql: str) -> None:
    """Each of these is refused before anything is sent."""
    with pytest.raises(UnsafeOperation):
        check_sql(sql, write_allowed=False)


@pytest.mark.parametrize("sql", ALLOWED_READ_ONLY)
def test_keywords_inside_literals_comments_and_quoted_names_do_not_trigger(sql: str) -> None:
    """Reads pass, whatever their strings, comments and quoted identifiers say."""
    (stmt,) = check_sql(sql, write_allowed=False)
    assert not stmt.write


@pytest.mark.parametrize("sql", ["BEGIN READ WRITE", "commit", "SET default_transaction_read_only = off",
                                 "select set_config('x.y', '1', false)", "copy t to '/tmp/x'",
                                 "select lo_export(1, '/tmp/x')", "reset all", "select 1; commit"])
def test_transaction_control_settings_and_server_files_are_refused_even_with_allow_write(sql: str) -> None:
    """--allow-write permits writes, not escaping pyx's transaction and session settings."""
    with pytest.raises(UnsafeOperation):
        check_sql(sql, write_allowed=True)


def test_with_allow_write_writes_are_marked_and_reads_are_not() -> None:
    """Statements are classified one by one; several per call are allowed when writing."""
    stmts = check_sql("update t set a = 1; select 1; delete from t", write_allowed=True)
    assert [s.write for s in stmts] == [True, False, True]
    assert [s.text for s in stmts] == ["update t set a = 1", "select 1", "delete from t"]


def test_unterminated_literals_are_refused_not_guessed() -> None:
    """A statement pyx cannot tokenise is not sent."""
    for sql in ("select 'abc", "select $$abc", "select /* x", 'select "abc'):
        with pytest.raises(UsageProblem):
            check_sql(sql, write_allowed=False)


def test_refusal_message_names_the_way_to_write() -> None:
    """The message says why and how to write on purpose."""
    with pytest.raises(UnsafeOperation) as info:
        check_sql("delete from t", write_allowed=False)
    assert "DELETE" in str(info.value) and "--allow-write" in str(info.value)


# ----------------------------------------------------------------------------- safety on a real server

@pytest.mark.services
def test_update_in_read_only_mode_is_refused_and_the_row_is_unchanged(db_url: str, tmp_path: Path) -> None:
    """UPDATE through query_df or execute fails with UnsafeOperation; raw psycopg sees the old value."""
    run = new_run(tmp_path)
    with connect(run) as db:
        sent = len(run.data_access)
        with pytest.raises(UnsafeOperation, match="read-only"):
            db.query_df("update t set amount = 0 where id = 1")
        with pytest.raises(UnsafeOperation, match="--allow-write"):
            db.execute("update t set amount = 0 where id = 1")
        assert len(run.data_access) == sent  # refused before sending: nothing recorded as run
        assert db.query_df("select count(*) as n from t")["n"][0] == 4  # the session still works
    assert raw_one(db_url, "select amount::text from t where id = 1") == ("896.60",)


@pytest.mark.services
def test_terminate_backend_and_read_write_tricks_are_refused_on_a_live_server(db_url: str, tmp_path: Path) -> None:
    """The tricks that work against default_transaction_read_only alone do nothing through pyx."""
    run = new_run(tmp_path)
    with psycopg.connect(db_url, autocommit=True) as victim, connect(run) as db:
        pid = victim.info.backend_pid
        for sql in (f"select pg_terminate_backend({pid})", "BEGIN READ WRITE",
                    "SET default_transaction_read_only = off",
                    "select set_config('default_transaction_read_only', 'off', false)",
                    "select 1; delete from t"):
            with pytest.raises(UnsafeOperation):
                db.query_df(sql)
        assert victim.execute("select 1").fetchone() == (1,)  # not terminated
        assert db.fingerprint()["transaction_read_only"] == "on"
    assert raw_one(db_url, "select count(*) from t") == (4,)


@pytest.mark.services
def test_a_function_that_writes_is_stopped_by_the_read_only_transaction(db_url: str, tmp_path: Path) -> None:
    """What the checker cannot see (a user function) still fails in the READ ONLY transaction."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION zap() RETURNS int LANGUAGE sql AS 'UPDATE t SET amount = 0 RETURNING 1'")
    with connect(new_run(tmp_path)) as db:
        with pytest.raises(UnsafeOperation, match="read-only"):
            db.query_df("select zap()")
        assert db.query_df("select 1 as x")["x"][0] == 1
    assert raw_one(db_url, "select amount::text from t where id = 1") == ("896.60",)


@pytest.mark.services
def test_with_allow_write_an_update_is_committed_and_recorded_with_its_op(db_url: str, tmp_path: Path) -> None:
    """In a task run with --allow-write, execute() commits and the manifest records the write."""
    session = Session.start(tmp_path / "inv", "t1", "local", resume=False)
    src = "n = pyx.db().execute('update t set amount = %s where id = %s', [1.25, 1])"
    ns: dict = {}
    _, m = run_task(session, TaskRequest("fix", src, allow_write="fix order 1 amount"), in_process(src, ns))
    assert m["status"] == "succeeded", m["error"]
    assert ns["n"] == 1
    assert raw_one(db_url, "select amount::text from t where id = 1") == ("1.25",)
    (write,) = [a for a in m["data_access"] if a["op"] == "execute"]
    assert write["write"] is True and write["rows"] == 1 and write["target"] == "postgres"
    assert write["statement"] == "update t set amount = 1.25 where id = 1"
    assert m["targets"][0]["settings"]["read_only"] is False


@pytest.mark.services
def test_with_allow_write_a_labelled_query_df_may_not_repeat_a_write(db_url: str, tmp_path: Path) -> None:
    """A label would run the statement again for the CSV, so a write with a label is refused."""
    with connect(new_run(tmp_path, allow_write="test")) as db:
        with pytest.raises(UsageProblem, match="read query"):
            db.query_df("update t set amount = amount + 1 returning id", label="bumped")
        path = db.to_csv("update t set amount = amount + 1 where id = 1 returning id, amount", "bumped")
    assert path.read_text() == "id,amount\n1,897.60\n"
    assert raw_one(db_url, "select amount::text from t where id = 1") == ("897.60",)


@pytest.mark.services
def test_a_failed_write_is_rolled_back(db_url: str, tmp_path: Path) -> None:
    """A multi-statement write that fails half-way leaves nothing behind."""
    with connect(new_run(tmp_path, allow_write="test")) as db:
        with pytest.raises(psycopg.errors.UniqueViolation):
            db.execute("update t set amount = 7 where id = 1; insert into t (id) values (2)")
        assert db.execute("update t set note = 'ok' where id = 3") == 1
    assert raw_one(db_url, "select amount::text, (select note from t where id = 3) from t where id = 1") == \
        ("896.60", "ok")


# ----------------------------------------------------------------------------- connecting


@pytest.mark.services
@pytest.mark.parametrize("variable", ["DATABASE_URL", "DB_PORT"])
def test_nothing_listening_fails_fast_naming_the_variable_and_address(
        service_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """A closed port: ConnectionProblem in < 3 s with the variable, host:port and the tunnel question."""
    port = closed_port()
    if variable == "DATABASE_URL":
        monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:pw@127.0.0.1:{port}/pyx")
    else:
        monkeypatch.delenv("DATABASE_URL")
        monkeypatch.setenv("DB_PORT", str(port))
    t0 = time.monotonic()
    with pytest.raises(ConnectionProblem) as info:
        connect(new_run(tmp_path))
    assert time.monotonic() - t0 < 3
    msg = str(info.value)
    assert variable in msg and f"127.0.0.1:{port}" in msg and "tunnel" in msg


@pytest.mark.services
def test_a_wrong_password_is_a_clear_error_without_the_password(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The message says the login was refused; neither it nor the task's manifest holds the password."""
    wrong = "Wr0ng-Pa55word-4242"
    monkeypatch.setenv("DATABASE_URL", with_login(db_url, "postgres", wrong))
    with pytest.raises(ConnectionProblem) as info:
        connect(new_run(tmp_path))
    err = info.value
    assert "authentication failed" in str(err) and wrong not in str(err) and err.__suppress_context__
    session = Session.start(tmp_path / "inv2", "t1", "local", resume=False)
    run, m = run_task(session, TaskRequest("login", "pyx.db()"), in_process("pyx.db()", {}))
    assert m["status"] == "failed" and m["error"]["type"] == "ConnectionProblem"
    assert wrong not in run.manifest_path.read_text()


@pytest.mark.services
def test_the_target_is_recorded_with_the_server_identity(db_url: str, tmp_path: Path) -> None:
    """add_target gets database, user, address, version and the cluster's system identifier."""
    run = new_run(tmp_path)
    with connect(run, alias="orders_db") as db:
        (target,) = run.targets
        sysid = raw_one(db_url, "select system_identifier::text from pg_control_system()")[0]
        assert target["system"] == "postgres" and target["alias"] == "orders_db"
        assert target["identity"]["system_identifier"] == sysid == db.identity_key
        assert target["identity"]["database"] == db_url.rsplit("/", 1)[1]
        assert target["identity"]["version"].startswith("PostgreSQL")
        assert target["identity"]["in_recovery"] is False
        assert isinstance(target["fingerprint"], str) and len(target["fingerprint"]) == 16
        assert run.data_access[0]["target"] == "orders_db"


@pytest.mark.services
def test_fingerprint_has_the_fields_and_says_read_only(db_url: str, tmp_path: Path) -> None:
    """One dict: who, where, which server, recovery state, and transaction_read_only 'on'."""
    with connect(new_run(tmp_path)) as db:
        fp = db.fingerprint()
    port = int(db_url.rsplit(":", 1)[1].split("/")[0])
    assert fp["transaction_read_only"] == "on" and fp["default_transaction_read_only"] == "on"
    assert fp["database"] == db_url.rsplit("/", 1)[1] and fp["user"] == "postgres"
    assert fp["server_addr"] == "127.0.0.1" and fp["server_port"] == port
    assert fp["in_recovery"] is False and fp["replay_lag_s"] is None
    assert fp["timezone"] and fp["version"].startswith("PostgreSQL") and fp["now"]
    assert fp["system_identifier"] == raw_one(db_url, "select system_identifier::text from pg_control_system()")[0]
    assert fp["application_name"] == "pyx-t1" and fp["statement_timeout"] == "30s"


@pytest.mark.services
def test_a_role_without_pg_control_system_still_gets_a_fingerprint(db_url: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """system_identifier is None for a role that may not read pg_control_system(); the identity key falls back."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pyx_reader")
        conn.execute("CREATE ROLE pyx_reader LOGIN PASSWORD 'reader-pw-1234'")
        conn.execute("GRANT SELECT ON t TO pyx_reader")
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")  # this database only
    try:
        monkeypatch.setenv("DATABASE_URL", with_login(db_url, "pyx_reader", "reader-pw-1234"))
        with connect(new_run(tmp_path)) as db:
            fp = db.fingerprint()
            assert fp["user"] == "pyx_reader" and fp["system_identifier"] is None
            assert db.identity_key.startswith("PostgreSQL") and db.identity_key.endswith(f":{fp['server_port']}")
            assert db.query_df("select count(*) as n from t")["n"][0] == 4
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DROP OWNED BY pyx_reader")
            conn.execute("DROP ROLE pyx_reader")


@pytest.mark.services
def test_replica_lag_on_a_primary(db_url: str, tmp_path: Path) -> None:
    """A primary is not in recovery and has no replay lag."""
    with connect(new_run(tmp_path)) as db:
        assert db.replica_lag() == {"in_recovery": False, "replay_lag_s": None, "last_replay_at": None,
                                    "replay_gap_bytes": None}


# ----------------------------------------------------------------------------- bounds and interrupts


@pytest.mark.services
def test_statement_timeout_cancels_pg_sleep_and_the_session_still_works(db_url: str, tmp_path: Path) -> None:
    """pg_sleep(3) under a 0.5 s timeout: QueryTimeout naming the timeout, then the next query runs."""
    run = new_run(tmp_path)
    with connect(run, statement_timeout_s=0.5) as db:
        t0 = time.monotonic()
        with pytest.raises(QueryTimeout, match=r"statement_timeout=0.5 s"):
            db.query_df("select pg_sleep(3)")
        assert time.monotonic() - t0 < 2
        assert db.query_df("select 41 + 1 as x")["x"][0] == 42
    failed = [a for a in run.data_access if a.get("error")]
    assert failed and failed[0]["statement"] == "select pg_sleep(3)" and failed[0]["error"] == "QueryCanceled"


@pytest.mark.services
def test_a_timeout_during_copy_leaves_no_partial_file(db_url: str, tmp_path: Path) -> None:
    """A COPY cancelled mid-way raises QueryTimeout, writes no output and keeps the session usable."""
    run = new_run(tmp_path)
    with connect(run, statement_timeout_s=0.5) as db:
        with pytest.raises(QueryTimeout):
            db.to_csv("select g, pg_sleep(0.0005) from generate_series(1, 100000) g", "slow")
        assert not list(run.dir.glob("*db_rows.slow*"))
        assert db.query_df("select 1 as x")["x"][0] == 1


@pytest.mark.services
def test_lock_timeout_gives_up_waiting_for_a_lock(db_url: str, tmp_path: Path) -> None:
    """A table locked by someone else: QueryTimeout naming lock_timeout, instead of waiting."""
    with psycopg.connect(db_url) as holder, connect(new_run(tmp_path), lock_timeout_s=0.3) as db:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        with pytest.raises(QueryTimeout, match=r"lock_timeout=0.3 s"):
            db.query_df("select * from t")
        assert time.monotonic() - t0 < 2
        holder.rollback()
        assert len(db.query_df("select * from t")) == 4


def interrupt_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, _thread.interrupt_main)
    timer.start()
    return timer


def active_pyx_queries(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("select query from pg_stat_activity where application_name like 'pyx-%' "
                            "and state = 'active'").fetchall()
    return [r[0] for r in rows]


@pytest.mark.services
@pytest.mark.parametrize("how", ["query_df", "to_csv"])
def test_ctrl_c_cancels_the_running_query_and_the_session_recovers(db_url: str, tmp_path: Path, how: str) -> None:
    """KeyboardInterrupt during a query or a COPY: the server stops it, the next call works."""
    with connect(new_run(tmp_path)) as db:
        sql = "select pg_sleep(5)" if how == "query_df" else \
            "select g, pg_sleep(0.001) from generate_series(1, 5000) g"
        t0 = time.monotonic()
        timer = interrupt_after(0.3)
        try:
            with pytest.raises(KeyboardInterrupt):
                getattr(db, how)(sql, *(["ctrl_c"] if how == "to_csv" else []))
        finally:
            timer.cancel()
        assert time.monotonic() - t0 < 3
        assert active_pyx_queries(db_url) == []
        assert db.query_df("select 2 as x")["x"][0] == 2


@pytest.mark.services
def test_query_df_refuses_huge_results_without_fetching_them(db_url: str, tmp_path: Path) -> None:
    """Beyond max_rows: a clear error pointing at to_csv, after fetching only max_rows + 1 rows
    (of an endless result, which a client-side fetch would never finish)."""
    endless = "with recursive r(g) as (select 1 union all select g + 1 from r) select g from r"
    run = new_run(tmp_path)
    with connect(run, max_rows=1000, statement_timeout_s=5) as db:
        t0 = time.monotonic()
        with pytest.raises(UsageProblem, match="more than 1,000 rows") as info:
            db.query_df(endless)
        assert time.monotonic() - t0 < 2
        assert "to_csv" in str(info.value)
        df = db.query_df(endless, limit=5)
        assert list(df["g"]) == [1, 2, 3, 4, 5]
    assert run.data_access[-1]["rows"] == 5 and run.data_access[-1]["truncated"] is True


# ----------------------------------------------------------------------------- extracts


@pytest.mark.services
def test_to_csv_is_byte_identical_to_postgres_copy(db_url: str, tmp_path: Path) -> None:
    """Numeric scale, timestamptz text, quotes, newlines, NULLs and Unicode are the server's bytes."""
    run = new_run(tmp_path)
    query = "select * from t order by id"
    with connect(run) as db:
        path = db.to_csv(query, "orders")
        bound = db.to_csv("select * from t where id = %s or note = %s", "bound", params=[4, "it's"])
    data = path.read_bytes()
    assert data == raw_copy(db_url, query)
    assert b"896.60" in data and b"2024-03-01 23:58:30.123456+00" in data and b"-12.00" in data
    assert path.name == f"db_rows.orders.{run.run_id}.csv" and str(path) in run.explicit
    assert bound.read_bytes() == raw_copy(db_url, "select * from t where id = 4 or note = 'it''s'")
    copy = [a for a in run.data_access if a["op"] == "copy"]
    assert [a["rows"] for a in copy] == [4, 1] and copy[0]["output"] == path.name


@pytest.mark.services
def test_to_csv_masks_secret_values_in_rows(db_url: str, tmp_path: Path) -> None:
    """A secret from the environment stored in a row does not reach the CSV."""
    password = urlsplit(db_url).password
    assert password
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE t SET note = %s WHERE id = 1", [f"dsn pw {password} end"])
    with connect(new_run(tmp_path)) as db:
        data = db.to_csv("select id, note from t order by id", "masked").read_text()
    assert password not in data and "dsn pw [REDACTED] end" in data


@pytest.mark.services
def test_a_long_copy_shows_progress_on_stderr(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Past the progress threshold a tqdm bar counts rows on stderr."""
    monkeypatch.setattr(pg, "PROGRESS_AFTER_S", 0.0)
    with connect(new_run(tmp_path)) as db:
        db.to_csv("select g from generate_series(1, 3000) g", "progress")
    err = capsys.readouterr().err
    assert "COPY progress" in err and "3000 rows" in err


@pytest.mark.services
def test_query_df_with_a_label_writes_the_csv_and_records_it_in_the_manifest(db_url: str, tmp_path: Path) -> None:
    """Inside a real task: the DataFrame, the declared db_rows CSV, the target and both statements."""
    session = Session.start(tmp_path / "inv", "t1", "local", resume=False)
    src = "df = pyx.db().query_df('select * from t order by id', label='orders')"
    ns: dict = {}
    run, m = run_task(session, TaskRequest("orders", src), in_process(src, ns))
    assert m["status"] == "succeeded", m["error"]
    assert list(ns["df"]["id"]) == [1, 2, 3, 4] and str(ns["df"]["amount"][0]) == "896.60"
    (out,) = [f for f in m["files"]["outputs"] if f["path"].startswith("db_rows.")]
    assert out["path"] == f"db_rows.orders.{run.run_id}.csv" and out["role"] == "db_rows"
    assert (run.dir / out["path"]).read_bytes() == raw_copy(db_url, "select * from t order by id")
    assert m["targets"][0]["system"] == "postgres" and m["targets"][0]["endpoint"]["variable"] == "DATABASE_URL"
    ops = [(a["op"], a["rows"]) for a in m["data_access"]][1:]  # after the connect-time fingerprint
    assert ops == [("query", 4), ("copy", 4)]
    assert all(a["duration_ms"] >= 0 for a in m["data_access"])


@pytest.mark.services
def test_rows_near_the_day_boundary_in_a_time_zone(db_url: str, tmp_path: Path) -> None:
    """23:58 and 00:03 New York time are found (UTC session); 12:00, 23:54 and 00:06 are not."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int, happened_at timestamptz)")
        for i, local in enumerate(["2024-01-15 23:58", "2024-01-16 00:03", "2024-01-16 12:00",
                                   "2024-01-15 23:54", "2024-01-16 00:06"], start=1):
            conn.execute("INSERT INTO events VALUES (%s, %s::timestamp AT TIME ZONE 'America/New_York')",
                         [i, local])
    run = new_run(tmp_path)
    with connect(run) as db:
        df = db.rows_near_day_boundary("public.events", "happened_at", "America/New_York", window_minutes=5)
        with pytest.raises(UnsafeOperation):
            db.rows_near_day_boundary("events", "happened_at", "UTC", where="true; delete from events")
    assert list(df["id"]) == [1, 2]
    assert [float(m) for m in df["pyx_minutes_from_midnight"]] == [-2.0, 3.0]
    assert [str(ts) for ts in df["pyx_local_ts"]] == ["2024-01-15 23:58:00", "2024-01-16 00:03:00"]
    csv = run.dir / f"db_rows.day_boundary_public_events.{run.run_id}.csv"
    assert csv.read_text().count("\n") == 3


@pytest.mark.services
def test_a_lost_connection_is_reported_and_the_next_call_reconnects(db_url: str, tmp_path: Path) -> None:
    """The server killed our backend: ConnectionProblem naming the address, then a fresh connection."""
    with connect(new_run(tmp_path)) as db:
        assert db.query_df("select 1 as x")["x"][0] == 1
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'pyx-t1'")
        with pytest.raises(ConnectionProblem, match="lost the connection"):
            db.query_df("select 1 as x")
        assert db.query_df("select 3 as x")["x"][0] == 3


# ----------------------------------------------------------------------------- wrong environment


def confirm_as_prod(db_url: str, tmp_path: Path) -> str:
    """Record the server as environment 'prod' with the identity key pyx computes for it."""
    with connect(new_run(tmp_path)) as db:
        key = db.identity_key
        ep = db.endpoint
    guard.record(tmp_path / "inv", "prod", "postgres", {"host": ep.host, "port": ep.port}, key, None)
    return key


@pytest.mark.services
def test_connecting_under_another_label_raises_wrong_environment(db_url: str, tmp_path: Path) -> None:
    """A server confirmed as 'prod' is refused in a 'staging' session and accepted in a 'prod' one."""
    confirm_as_prod(db_url, tmp_path)
    with pytest.raises(WrongEnvironment, match="'prod'"):
        connect(new_run(tmp_path, label="staging"))
    with connect(new_run(tmp_path, label="prod")) as db:
        assert db.query_df("select 1 as x")["x"][0] == 1


@pytest.mark.services
def test_a_task_reaching_a_confirmed_server_under_another_label_is_refused(db_url: str, tmp_path: Path) -> None:
    """The run_task manifest says 'refused' when pyx.db() meets a server confirmed under another label."""
    confirm_as_prod(db_url, tmp_path)
    session = Session.start(tmp_path / "inv", "t2", "staging", resume=False)
    _, m = run_task(session, TaskRequest("peek", "pyx.db()"), in_process("pyx.db()", {}))
    assert m["error"]["type"] == "WrongEnvironment"
    assert m["status"] == "refused"
