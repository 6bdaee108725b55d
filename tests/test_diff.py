"""pyx.diff: field-by-field and keyed table diffs written as evidence."""

from __future__ import annotations

import csv
import json
from decimal import Decimal

import pandas as pd

from pyx_magics.datalayer.diff import compare_fields, compare_tables, flatten
from pyx_magics.execute import in_process
from pyx_magics.runner import Session, TaskRequest, run_task


def test_flatten_nested_values_to_paths():
    assert flatten({"a": {"b": 1}, "c": [1, {"d": 2}], "e": {}}) == {"a.b": 1, "c[0]": 1, "c[1].d": 2, "e": {}}


def test_field_diff_reports_missing_extra_changed_and_type_mismatch():
    db = {"id": 1042, "status": "PAID", "amount": Decimal("12.50"), "meta": {"v": 2}}
    cache = {"id": "1042", "status": "PENDING", "meta": {"v": 2}, "stale": True}
    by_path = {e["path"]: e for e in compare_fields(db, cache)}
    assert by_path["id"]["status"] == "type_mismatch" and by_path["id"]["left"] == 1042
    assert by_path["status"] == {"path": "status", "status": "changed", "left": "PAID", "right": "PENDING"}
    assert by_path["amount"]["status"] == "missing"
    assert by_path["stale"]["status"] == "extra"
    assert "meta.v" not in by_path


def test_json_strings_are_compared_as_documents():
    assert compare_fields('{"a": 1}', {"a": 1}) == []


def test_table_diff_on_a_key_gives_a_status_per_row():
    left = pd.DataFrame({"id": [1, 2, 3], "status": ["PAID", "PAID", "NEW"]})
    right = [{"id": 1, "status": "PAID"}, {"id": 2, "status": "PENDING"}, {"id": 4, "status": "NEW"}]
    columns, rows = compare_tables(left, right, "id")
    assert columns[:3] == ["id", "status", "changed_columns"]
    assert {r["id"]: r["status"] for r in rows} == {"1": "match", "2": "changed", "3": "missing", "4": "extra"}
    assert next(r for r in rows if r["id"] == "2")["changed_columns"] == "status"


def test_pyx_diff_writes_evidence_files_declared_in_the_manifest(tmp_path):
    session = Session.start(tmp_path / "temp", "diffs", "local", resume=False)
    src = (
        "import pandas as pd\n"
        "pyx.diff('order_1042', {'status': 'PAID', 'v': 2}, {'status': 'PENDING', 'v': 1},"
        " left_name='db', right_name='cache')\n"
        "pyx.diff('orders', pd.DataFrame({'id': [1, 2], 's': ['a', 'b']}),"
        " pd.DataFrame({'id': [1, 2], 's': ['a', 'x']}), key='id')\n"
    )
    run, m = run_task(session, TaskRequest("diffs", src), in_process(src, {}))
    assert m["status"] == "succeeded", m["error"]
    outs = {o["path"]: o for o in m["files"]["outputs"]}
    rid = m["run_id"]
    fields = json.loads((tmp_path / "temp" / f"diff.order_1042.{rid}.json").read_text())
    assert fields["left"] == "db" and fields["counts"]["changed"] == 2 and not fields["equal"]
    table = list(csv.DictReader((tmp_path / "temp" / f"expected_vs_actual.orders.{rid}.csv").read_text().splitlines()))
    assert [r["status"] for r in table] == ["match", "changed"]
    assert outs[f"diff.orders.{rid}.json"]["role"] == "diff"
    assert outs[f"expected_vs_actual.orders.{rid}.csv"]["rows"] == 2


def test_partition_table_puts_counts_side_by_side_with_delta_and_status(tmp_path):
    session = Session.start(tmp_path / "temp", "parts", "local", resume=False)
    src = "rows = pyx.partition_table('per_partition', {0: 40, 1: 41, 2: 40}, {0: 40, 1: 27, 3: 1}, " \
          "left_name='produced', right_name='consumed')"
    ns: dict = {}
    run, m = run_task(session, TaskRequest("parts", src), in_process(src, ns))
    assert m["status"] == "succeeded", m["error"]
    path = tmp_path / "temp" / f"expected_vs_actual.per_partition.{m['run_id']}.csv"
    table = list(csv.DictReader(path.read_text().splitlines()))
    assert [(r["partition"], r["delta"], r["status"]) for r in table] == [
        ("0", "0", "match"), ("1", "-14", "changed"), ("2", "", "missing"), ("3", "", "extra")]
    assert [o["path"] for o in m["files"]["outputs"]] == [path.name]
