"""Fingerprints and the wrong-environment guard against the real local servers."""

from __future__ import annotations

import json

import pytest

from pyx_magics.core import manifest
from pyx_magics.datalayer import guard
from pyx_magics.datalayer.cli import confirm

pytestmark = pytest.mark.services


@pytest.fixture
def shell(service_env, pyx_shell):
    return pyx_shell


def only(root, pattern):
    (path,) = sorted(root.glob(pattern))
    return manifest.read(path)


def test_fingerprint_magic_writes_one_task_per_system_with_server_facts(shell, tmp_path, service_env):
    shell.run_line_magic("pyx_topic", "fp --env local")
    shell.run_line_magic("pyx_fingerprint", "")
    result = shell.user_ns["pyx_fingerprints"]
    assert set(result) == {"postgres", "redis", "kafka"}
    root = tmp_path / "temp"
    pg = only(root, "fingerprint_postgres.*.manifest.json")
    assert pg["status"] == "succeeded" and pg["environment_label"] == "local"
    doc = json.loads((root / f"fingerprint.postgres.{pg['run_id']}.json").read_text())
    assert doc["database"] == "pyx" and doc["transaction_read_only"] == "on"
    assert doc["server_port"] == int(service_env["DB_PORT"]) or doc["endpoint"]["port"] == int(service_env["DB_PORT"])
    assert [t["system"] for t in pg["targets"]] == ["postgres"] and pg["data_access"]
    rd = only(root, "fingerprint_redis.*.manifest.json")
    rdoc = json.loads((root / f"fingerprint.redis.{rd['run_id']}.json").read_text())
    assert rdoc["role"] == "master" and rdoc["run_id"] and "key_patterns" in rdoc
    kf = only(root, "fingerprint_kafka.*.manifest.json")
    kdoc = json.loads((root / f"fingerprint.kafka.{kf['run_id']}.json").read_text())
    assert kdoc["brokers"] and isinstance(kdoc["topics"], list)
    for m in (pg, rd, kf):
        assert service_env["DB_PASSWORD"] not in json.dumps(m)


def test_unknown_system_is_a_usage_error(shell):
    r = shell.run_cell("%pyx_fingerprint mongo")
    assert type(r.error_in_exec).__name__ == "UsageError"


def test_a_task_reaching_a_system_confirmed_under_another_label_is_refused_before_it_runs(shell, tmp_path):
    root = tmp_path / "temp"
    records = confirm("prod", ["postgres"], str(root))
    assert records[0]["status"] == "succeeded" and records[0]["identity_key"]
    shell.run_line_magic("pyx_topic", "guarded --env staging")
    r = shell.run_cell("%%pyx_run touch_db\nran = True\ndf = pyx.db().query_df('select 1 as x')")
    assert not r.success and "ran" not in shell.user_ns
    m = only(root, "touch_db.*.manifest.json")
    assert m["status"] == "refused"
    assert "'prod'" in m["error"]["message"] and "'staging'" in m["error"]["message"]
    assert shell.run_cell("%%pyx_run no_db\nx = 1").success, "tasks that do not reach the system still run"


def test_the_guard_also_refuses_at_connect_time_by_server_identity(shell, tmp_path, service_env):
    root = tmp_path / "temp"
    root.mkdir()
    (rec,) = confirm("prod", ["postgres"], str(root))
    # same server identity, but recorded at another port (e.g. the tunnel moved): the endpoint check can't see it
    guard.record(root, "prod", "postgres", {"host": "127.0.0.1", "port": 1}, rec["identity_key"], None)
    data = guard.load(root)
    data["systems"] = [s for s in data["systems"] if s["endpoint"]["port"] == 1]
    (root / guard.CONFIRMATIONS).write_text(json.dumps(data))
    shell.run_line_magic("pyx_topic", "moved --env staging")
    r = shell.run_cell("%%pyx_run touch_db\npyx.db().query_df('select 1 as x')")
    assert not r.success
    assert only(root, "touch_db.*.manifest.json")["status"] == "refused"
