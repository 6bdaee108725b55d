"""`pyx rerun` of the incident template against the real local servers: reproduced, then exactly what changed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from pathlib import Path

import nbformat
import pytest

from pyx_magics.cli import main as pyx
from pyx_magics.demo import seed
from pyx_magics.demo.notebooks import template_notebook

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def investigated(tmp_path, monkeypatch, service_env, pyx_kernel_env):
    """The template notebook run once by papermill on the pyx kernel over freshly seeded servers."""
    import papermill as pm

    for key, value in pyx_kernel_env.items():
        monkeypatch.setenv(key, value)
    for key in ("PYX_DIR", "PYX_TOPIC", "PYX_SESSION_ID"):
        monkeypatch.delenv(key, raising=False)
    seed.seed_all(service_env)
    monkeypatch.chdir(tmp_path)
    nb = template_notebook()
    nb.cells = [c for c in nb.cells if "%pyx_export" not in c.source]  # reports are not what this test is about
    nbformat.write(nb, tmp_path / "incident.ipynb")
    pm.execute_notebook("incident.ipynb", "original.ipynb", parameters={"topic": "rr-live"}, kernel_name="pyx",
                        progress_bar=False, request_save_on_cell_execute=False, cwd=str(tmp_path))
    return tmp_path


def report(root: Path) -> dict:
    (path,) = sorted((root / "temp").glob("rr-live.*.compare.json"), key=lambda p: p.stat().st_mtime)[-1:]
    return json.loads(path.read_text())


def changed_files(rep: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for t in rep["tasks"]:
        if t["verdict"] != "reproduced":
            out[t["task"]] = {o["path"] for o in t["outputs"] if o.get("change") != "same"}
    return out


def test_rerun_on_unchanged_data_is_reproduced(investigated):
    assert pyx(["rerun", "original.ipynb", "--output", "rerun.ipynb"]) == 0
    rep = report(investigated)
    assert rep["reproduced"] and rep["counts"]["reproduced"] == 7


def _append_kafka_message(brokers: str) -> None:
    async def produce() -> None:
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=brokers)
        await p.start()
        try:
            ts = int(seed.datetime(2026, 12, 3, 23, 30, tzinfo=seed.UTC).timestamp() * 1000)
            ev = {"event_id": "evt-1042-refund-check", "type": "order.checked", "order_id": 1042}
            await p.send_and_wait(seed.TOPIC, json.dumps(ev).encode(), key=b"1042", partition=1, timestamp_ms=ts)
        finally:
            await p.stop()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, produce()).result()


def test_one_db_row_one_redis_key_and_one_kafka_message_changed_are_named_exactly(investigated, service_env):
    import psycopg
    import redis

    with psycopg.connect(service_env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE id = 1042")
    with redis.Redis.from_url(service_env["REDIS_URL"]) as r:
        r.set("order:1042", json.dumps({"v": 1, "id": 1042, "state": "PENDING", "total": "0.00"}))
    _append_kafka_message(service_env["KAFKA_BROKERS"])

    assert pyx(["rerun", "original.ipynb", "--output", "rerun.ipynb"]) == 1
    rep = report(investigated)
    verdicts = {t["task"]: t["verdict"] for t in rep["tasks"]}
    assert verdicts == {"fingerprint_postgres": "reproduced", "fingerprint_redis": "reproduced",
                        "fingerprint_kafka": "reproduced", "db_rows": "data_changed",
                        "cache_vs_db": "data_changed", "consumer_lag": "data_changed", "events": "data_changed"}
    files = {task: {p.split(".<run_id>")[0] for p in paths} for task, paths in changed_files(rep).items()}
    # order 1042 was paid a minute before midnight in Paris: both extracts hold the changed row
    assert files["db_rows"] == {"db_rows.orders", "db_rows.day_boundary"}
    assert files["cache_vs_db"] == {"redis_value.entity_1042"}, "the status diff did not change, the value did"
    assert files["consumer_lag"] == {"kafka_offsets.cache-updater"}
    assert files["events"] == {"kafka_messages.entity_1042", "message_count_per_partition"}
    orders = next(o for o in next(t for t in rep["tasks"] if t["task"] == "db_rows")["outputs"]
                  if o["path"].startswith("db_rows.orders"))
    assert (orders["rows_changed"], orders["rows_added"], orders["rows_removed"]) == (1, 0, 0)
