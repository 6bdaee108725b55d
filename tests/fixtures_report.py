"""Fixture investigations for the report tests: real tasks through the runner, real journal notes,
a notebook built with nbformat the way Jupyter or papermill would have saved it.

The tasks record their data-system contact through the recorder API the data layer uses
(``run.add_target`` / ``run.add_access``), so no server is needed; their outputs are real files.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
from nbformat import v4

from pyx_magics.display import TaskSummary
from pyx_magics.execute import in_process
from pyx_magics.journal import append as journal_append
from pyx_magics.runner import Session, TaskRequest, run_task

TOPIC = "acme-order-1042"
WINDOW = {"start": "2026-01-05T09:00:00+00:00", "end": "2026-01-05T12:00:00+00:00", "timezone": "UTC"}
PG = ('{"system": "postgres", "alias": "main", "endpoint": {"host": "127.0.0.1", "port": 55432}, '
      '"identity": {"server_version": "16.4", "database": "acme_prod", "host": "db-7.acme.internal"}, '
      '"fingerprint": "a1b2c3d4e5f6"}')
REDIS = ('{"system": "redis", "alias": "cache", "endpoint": {"host": "127.0.0.1", "port": 56379}, '
         '"identity": {"redis_version": "7.2.4", "run_id": "4f0c2d"}, "fingerprint": "0badc0ffee00"}')
KAFKA = ('{"system": "kafka", "alias": "events", "endpoint": {"host": "127.0.0.1", "port": 59092}, '
         '"identity": {"cluster_id": "acme-cluster-1", "brokers": 1}, "fingerprint": "feedbeef1234"}')

TASKS: dict[str, str] = {
    "fingerprint_env": f"""\
import json, os
for t in ({PG}, {REDIS}, {KAFKA}):
    pyx._run.add_target(t)
pyx.save("fingerprint.postgres.json", {{"server_version": "16.4", "database": "acme_prod", "in_recovery": False}})
print("connected as reader with password", os.environ["DB_PASSWORD"])
print("\\x1b[32mall three systems answered\\x1b[0m")
""",
    "check_db": f"""\
pyx._run.add_target({PG})
pyx._run.add_access({{"target": "main", "op": "query", "rows": 1, "duration_ms": 1.5,
    "statement": "select id, status, updated_at from acme_orders where id = 1042"}})
pyx._run.add_access({{"target": "main", "op": "query", "rows": 2, "duration_ms": 2.5,
    "statement": "select o.id, p.state from acme_orders o join acme_payments p on p.order_id = o.id "
                 "where o.updated_at >= '2026-01-05T09:00:00+00:00'"}})
pyx.save("db_rows.orders.csv", "id,status,updated_at\\n1042,paid,2026-01-05T10:00:00Z\\n")
print("order", pyx.input["entity_ids"][0], "is paid in the database")
""",
    "check_cache": f"""\
pyx._run.add_target({REDIS})
pyx._run.add_access({{"target": "cache", "op": "GET", "statement": "GET acme:order:1042", "rows": 1,
    "duration_ms": 0.3}})
pyx.save("redis_value.order.json", {{"key": "acme:order:1042", "value": {{"status": "pending"}}, "ttl": -1}})
pyx.save("diff.db_vs_cache.json", {{"label": "db_vs_cache", "left": "db", "right": "cache", "entries": [
    {{"field": "status", "left": "paid", "right": "pending", "status": "changed"}},
    {{"field": "id", "left": 1042, "right": 1042, "status": "equal"}}]}})
""",
    "check_kafka": f"""\
pyx._run.add_target({KAFKA})
pyx._run.add_access({{"target": "events", "op": "offsets", "rows": 3, "duration_ms": 4.0,
    "statement": "topic=acme.order-events group=acme-order-service"}})
pyx.save("kafka_offsets.order_events.json", {{"topic": "acme.order-events", "group": "acme-order-service",
    "partitions": [
        {{"partition": 0, "current_offset": 100, "log_end_offset": 100, "lag": 0}},
        {{"partition": 1, "current_offset": 90, "log_end_offset": 130, "lag": 40}},
        {{"partition": 2, "current_offset": 50, "log_end_offset": 52, "lag": 2}}]}})
pyx.save("kafka_counts.order_events.csv", "partition,count\\n0,12\\n1,40\\n2,3\\n")
print("lag on partition 1:", 40)
""",
    "replay_check": """\
print("replaying partition 1")
raise RuntimeError("consumer offset reset failed for partition 1")
""",
    "verify_fix": """\
print("verifying")
""",
}

PARAMS = {"time_window": WINDOW, "entity_ids": [1042], "notes": "order stuck in pending"}


@dataclass
class Built:
    """A fixture investigation: its directory, notebook, session, manifests and planted secrets."""

    tmp: Path
    root: Path
    nb_path: Path
    session: Session
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    canaries: dict[str, str] = field(default_factory=dict)
    nb: Any = None


def canary() -> str:
    return "cnry" + secrets.token_hex(10)


def build(tmp: Path, monkeypatch: Any, *, mode: str = "papermill", failing: bool = True,
          topic: str = TOPIC) -> Built:
    """Run the fixture investigation. ``mode``: ``papermill`` (half-executed when ``failing``) or ``interactive``."""
    env_secret, token = canary(), canary()
    monkeypatch.setenv("DB_PASSWORD", env_secret)  # before the session: its redactor knows it
    root = tmp / "temp"
    session = Session.start(root, topic, "local", resume=False)
    papermill = mode == "papermill"
    # the token is a secret because papermill injects it under a secret-looking name
    planted = {"env": env_secret, "token": token} if papermill else {"env": env_secret}
    b = Built(tmp, session.dir, tmp / "incident.ipynb", session, canaries=planted)
    cells: list[Any] = []
    ec = 0

    def note(kind: str, text: str, **extra: str) -> None:
        nonlocal ec
        ec += 1
        record = {"kind": "note", "note": kind, "text": text, **extra,
                  "at": datetime.now(UTC).isoformat(timespec="milliseconds"), "execution_count": ec}
        journal_append(session.dir, session.topic, session.session_id, record)
        words = " ".join([text, *(f"{k}={v}" for k, v in extra.items())])
        cell = v4.new_code_cell(f"%pyx_note {kind} {words}", execution_count=ec)
        cell.outputs = [v4.new_output("stream", name="stdout", text=f"noted {kind}: {text}\n")]
        cells.append(cell)

    def task(name: str, params: dict[str, Any] | None = None, line: str = "") -> dict[str, Any]:
        nonlocal ec
        ec += 1
        code = TASKS[name]
        _, m = run_task(session, TaskRequest(name, code, params or {}, execution_count=ec, notebook=b.nb_path.name),
                        in_process(code, {}))
        b.manifests[name] = m
        journal_append(session.dir, session.topic, session.session_id,
                       {"kind": "cell", "execution_count": ec, "run_ids": [m["run_id"]], "status": m["status"]})
        summary = TaskSummary(m)
        cell = v4.new_code_cell(f"%%pyx_run {name}{line}\n{code}", execution_count=ec)
        outs = []
        if name == "fingerprint_env":  # what a careless front end could have shown live
            outs.append(v4.new_output("stream", name="stdout", text=f"connected with password {env_secret}\n"))
        outs.append(v4.new_output("display_data", data={"text/plain": repr(summary),
                                                        "text/html": summary._repr_html_()}))
        if m["status"] != "succeeded":
            outs.append(v4.new_output("error", ename="TaskFailed", evalue=f"task {name} failed",
                                      traceback=["TaskFailed: task failed"]))
        cell.outputs = outs
        if papermill:
            cell.metadata["papermill"] = {"status": "failed" if m["status"] != "succeeded" else "completed",
                                          "exception": m["status"] != "succeeded"}
        cells.append(cell)
        return m

    cells.append(v4.new_markdown_cell(
        "# Order 1042 stuck in pending\n\n## Problem statement\n\nThe customer sees order 1042 as *pending* "
        f"although it was paid.\n\nDebug login used: {' / '.join(planted.values())}\n"))
    params_cell = v4.new_code_cell(f"topic = {topic!r}\nenvironment_label = 'local'\nentity_ids = [1042]\n"
                                   "api_token = ''\n")
    params_cell.metadata["tags"] = ["parameters"]
    cells.append(params_cell)
    if papermill:
        injected = v4.new_code_cell(f"# Parameters\napi_token = {token!r}\nentity_ids = [1042]\n")
        injected.metadata["tags"] = ["injected-parameters"]
        cells.append(injected)
    note("expected", "A paid order shows as paid in the app within a minute")
    note("scope", "Order 1042 and any order paid between 09:00 and 12:00 UTC on 2026-01-05")
    note("hypothesis", "The cache entry was not invalidated after the payment event")
    task("fingerprint_env")
    task("check_db", PARAMS, " --param entity_ids=[1042]")
    note("finding", "The database has order 1042 as paid since 10:00 UTC")
    task("check_cache", PARAMS)
    note("finding", "The cache still holds pending for acme:order:1042 with no TTL")
    task("check_kafka", PARAMS)
    note("root_cause", "The acme-order-service consumer lags 40 messages on partition 1 of acme.order-events, "
                       "so the cache invalidation for order 1042 never ran")
    cells.append(v4.new_markdown_cell("## Mitigation / Fix\n\nEvict `acme:order:1042` and restart the stuck "
                                      "consumer of partition 1.\n"))
    note("fix", "Evict the stale cache key and restart the consumer on partition 1")
    note("impact", "About 120 orders paid in the window showed as pending for up to two hours")
    note("prevention", "Alert on consumer lag above 10 messages for more than 5 minutes: nothing detected this")
    note("action", "Correct the cached status of the affected orders (backfill from acme_orders)",
         owner="alice", due="2026-02-01")
    note("action", "Add a lag alert for acme-order-service", owner="bob", due="2026-02-15")
    if failing:
        task("replay_check", PARAMS)
        if papermill:  # papermill stops: the cells after the failing one never ran
            pending = v4.new_code_cell("%%pyx_run verify_fix\n" + TASKS["verify_fix"])
            pending.metadata["papermill"] = {"status": "pending", "exception": None}
            cells.append(pending)
            later = v4.new_code_cell("%pyx_note status resolved")
            later.metadata["papermill"] = {"status": "pending", "exception": None}
            cells.append(later)
            cells.append(v4.new_markdown_cell("## Prevention\n\nAdd an alert on consumer lag.\n"))
        else:
            note("status", "Mitigated; data correction in progress, ETA 2026-02-01")
    else:
        note("status", "Mitigated; data correction in progress, ETA 2026-02-01")
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if papermill:
        nb.metadata["papermill"] = {"parameters": {"api_token": token, "entity_ids": [1042]},
                                    "input_path": "incident.ipynb", "output_path": "incident.ipynb",
                                    "exception": failing}
    nbformat.validate(nb)
    nbformat.write(nb, str(b.nb_path))
    b.nb = nb
    return b
