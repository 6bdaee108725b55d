"""Run-vs-run comparison (core.compare), `pyx compare` and `pyx run --replay` on manifests made by the real runner."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pyx_magics.cli import main as pyx
from pyx_magics.core import compare
from pyx_magics.execute import in_process
from pyx_magics.replay import open_in
from pyx_magics.runner import Session, TaskRequest, run_task

LOAD = textwrap.dedent("""\
    import json
    import pandas as pd
    df = pd.read_csv(pyx.dir.parent / "orders.csv")
    pyx.save("orders_big.csv", df[df.amount >= pyx.input.get("threshold", 10)])
    pyx.save("stats.json", {"n": len(df), "total": int(df.amount.sum()), "by_status": df.status.value_counts().to_dict()})
    with open(pyx.out("events.jsonl"), "w") as f:
        for r in df.itertuples():
            f.write(json.dumps({"id": int(r.id), "status": r.status}) + "\\n")
""")
OTHER = 'pyx.save("constant.json", {"answer": 42})\n'
ORDERS = "id,amount,status\n1,5,new\n2,15,paid\n3,25,paid\n"


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the cwd, where input files are recorded from) with temp/ inside."""
    (tmp_path / "orders.csv").write_text(ORDERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYX_DIR", raising=False)
    return tmp_path


def session(ws: Path, runs: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run tasks (name, code, params) in a new session of topic t1 and return their final manifests."""
    s = Session.start(ws / "temp", "t1", "local", resume=False)
    out = []
    for task, code, params in runs:
        _, m = run_task(s, TaskRequest(task, code, params), in_process(code, {}))
        out.append(m)
    return out


def verdicts(result: dict[str, Any]) -> dict[tuple[str, int], str]:
    return {(t["task"], t["occurrence"]): t["verdict"] for t in result["tasks"]}


def by_task(result: dict[str, Any], task: str) -> dict[str, Any]:
    return next(t for t in result["tasks"] if t["task"] == task)


def test_the_same_code_on_the_same_data_reproduces_although_run_ids_and_timings_differ(ws):
    a = session(ws, [("load", LOAD, {}), ("other", OTHER, {})])
    b = session(ws, [("load", LOAD, {}), ("other", OTHER, {})])
    assert a[0]["run_id"] != b[0]["run_id"] and a[0]["timing"] != b[0]["timing"]
    result = compare.compare_sessions(a, b, open_in(ws / "temp"))
    assert verdicts(result) == {("load", 1): "reproduced", ("other", 1): "reproduced"}
    assert result["reproduced"] and compare.exit_code(result) == 0


def test_changed_data_names_only_the_affected_outputs_with_row_line_and_path_counts(ws):
    a = session(ws, [("load", LOAD, {}), ("other", OTHER, {})])
    (ws / "orders.csv").write_text("id,amount,status\n1,5,new\n2,15,refunded\n4,40,paid\n5,50,new\n")
    b = session(ws, [("load", LOAD, {}), ("other", OTHER, {})])
    result = compare.compare_sessions(a, b, open_in(ws / "temp"))
    assert verdicts(result) == {("load", 1): "data_changed", ("other", 1): "reproduced"}
    load = by_task(result, "load")
    outs = {o["path"]: o for o in load["outputs"]}
    assert set(outs) == {"orders_big.<run_id>.csv", "stats.<run_id>.json", "events.<run_id>.jsonl"}
    csv_diff = outs["orders_big.<run_id>.csv"]
    assert csv_diff["key"] == "id"
    assert (csv_diff["rows_added"], csv_diff["rows_removed"], csv_diff["rows_changed"]) == (2, 1, 1)
    assert csv_diff["examples"] == {"added": ["4", "5"], "removed": ["3"], "changed": ["2"]}
    assert csv_diff["columns_changed"] == {"status": 1}
    lines = outs["events.<run_id>.jsonl"]
    assert (lines["rows_added"], lines["rows_removed"], lines["rows_changed"]) == (1, 0, 2)
    paths = {p["path"]: p["change"] for p in outs["stats.<run_id>.json"]["paths"]}
    assert paths == {"$.n": "changed", "$.total": "changed", "$.by_status.new": "changed",
                     "$.by_status.paid": "changed", "$.by_status.refunded": "added"}
    assert "input file(s) changed: ../orders.csv" in load["reasons"]
    assert compare.exit_code(result) == 1


def test_csv_without_a_unique_first_column_is_compared_as_a_multiset_of_rows(ws):
    code = 'import pandas as pd\npyx.save("dup.csv", pd.read_csv(pyx.dir.parent / "dup.csv"))\n'
    (ws / "dup.csv").write_text("k,v\na,1\na,2\nb,3\n")
    a = session(ws, [("dup", code, {})])
    (ws / "dup.csv").write_text("k,v\na,1\nb,3\nb,4\nb,5\n")
    b = session(ws, [("dup", code, {})])
    out = by_task(compare.compare_sessions(a, b, open_in(ws / "temp")), "dup")["outputs"][0]
    assert out["key"] is None and (out["rows_added"], out["rows_removed"]) == (2, 1)


def test_changed_code_or_input_is_logic_changed_and_says_which(ws):
    a = session(ws, [("load", LOAD, {"threshold": 10}), ("other", OTHER, {})])
    b = session(ws, [("load", LOAD, {"threshold": 20}), ("other", OTHER.replace("42", "43"), {})])
    result = compare.compare_sessions(a, b, open_in(ws / "temp"))
    assert verdicts(result) == {("load", 1): "logic_changed", ("other", 1): "logic_changed"}
    load, other = by_task(result, "load"), by_task(result, "other")
    assert load["logic"]["input_changed"] == [{"path": "$.threshold", "change": "changed"}]
    assert not load["logic"]["code_changed"]
    assert other["logic"]["code_changed"] and "+pyx.save(\"constant.json\", {\"answer\": 43})" in other["logic"]["code_diff"]
    assert other["logic"]["input_changed"] == []


def test_notes_are_not_part_of_the_question(ws):
    a = session(ws, [("other", OTHER, {"notes": "first look"})])
    b = session(ws, [("other", OTHER, {"notes": "second look"})])
    assert verdicts(compare.compare_sessions(a, b, open_in(ws / "temp"))) == {("other", 1): "reproduced"}


def test_runs_are_matched_by_task_and_order_giving_missing_new_and_failed(ws):
    a = session(ws, [("other", OTHER, {}), ("other", OTHER, {}), ("gone", OTHER, {}), ("boom", "x = 1\n", {})])
    b = session(ws, [("other", OTHER, {}), ("boom", "raise ValueError('bad row')\n", {}), ("extra", OTHER, {})])
    result = compare.compare_sessions(a, b, open_in(ws / "temp"))
    assert verdicts(result) == {("other", 1): "reproduced", ("other", 2): "missing", ("gone", 1): "missing",
                                ("boom", 1): "failed", ("extra", 1): "new"}
    assert by_task(result, "boom")["reasons"] == ["B failed: ValueError: bad row"]
    assert result["counts"] == {"reproduced": 1, "data_changed": 0, "logic_changed": 0, "missing": 2, "new": 1,
                                "failed": 1}


def test_a_run_id_inside_an_output_is_not_a_difference(ws):
    code = 'pyx.save("report.txt", f"written by {pyx.run_id}\\n")\n'
    a, b = session(ws, [("rep", code, {})]), session(ws, [("rep", code, {})])
    assert a[0]["compare"]["output_digest"] != b[0]["compare"]["output_digest"]
    task = by_task(compare.compare_sessions(a, b, open_in(ws / "temp")), "rep")
    assert task["verdict"] == "reproduced" and task["reasons"] == ["outputs equal once run ids and observation times are ignored"]


def test_observation_times_in_json_and_jsonl_outputs_are_not_differences(ws):
    code = textwrap.dedent("""\
        import json, time
        lag = int(pyx.dir.parent.joinpath("lag").read_text())
        pyx.save("kafka_offsets.g.json", {"sampled_at": time.time(), "partitions": [{"partition": 0, "lag": lag}]})
        with open(pyx.out("scan.jsonl"), "w") as f:
            f.write(json.dumps({"key": "a", "duration_ms": time.perf_counter()}) + "\\n")
    """)
    (ws / "lag").write_text("3")
    a, b = session(ws, [("lag", code, {})]), session(ws, [("lag", code, {})])
    assert by_task(compare.compare_sessions(a, b, open_in(ws / "temp")), "lag")["verdict"] == "reproduced"
    (ws / "lag").write_text("4")
    c = session(ws, [("lag", code, {})])
    task = by_task(compare.compare_sessions(a, c, open_in(ws / "temp")), "lag")
    assert task["verdict"] == "data_changed"
    assert [(o["path"], o["paths"]) for o in task["outputs"]] == [
        ("kafka_offsets.g.<run_id>.json", [{"path": "$.partitions[0].lag", "change": "changed"}])]


FINGERPRINT = textwrap.dedent("""\
    import time
    fp = pyx.dir.parent.joinpath("server").read_text()
    pyx._run.add_target({"system": "postgres", "alias": "db", "endpoint": {"host": "127.0.0.1", "port": 5432},
                         "identity": {"system_identifier": fp}, "fingerprint": fp})
    pyx.save("fingerprint.postgres.json", {"system_identifier": fp, "now": time.time()})
""")


def test_a_fingerprint_output_is_compared_by_the_server_identity_not_the_moments_readings(ws):
    (ws / "server").write_text("7f3a9c")
    a, b = session(ws, [("fingerprint_postgres", FINGERPRINT, {})]), session(ws, [("fingerprint_postgres", FINGERPRINT, {})])
    task = by_task(compare.compare_sessions(a, b, open_in(ws / "temp")), "fingerprint_postgres")
    assert task["verdict"] == "reproduced"
    (ws / "server").write_text("0b1d2e")
    c = session(ws, [("fingerprint_postgres", FINGERPRINT, {})])
    task = by_task(compare.compare_sessions(a, c, open_in(ws / "temp")), "fingerprint_postgres")
    assert task["verdict"] == "data_changed"
    assert "data system identity changed: postgres:db" in task["reasons"]


def test_an_output_only_one_run_wrote_is_named(ws):
    code = 'if pyx.dir.parent.joinpath("flag").exists():\n    pyx.save("extra.json", [1, 2])\npyx.save("base.json", {})\n'
    a = session(ws, [("opt", code, {})])
    (ws / "flag").write_text("")
    b = session(ws, [("opt", code, {})])
    task = by_task(compare.compare_sessions(a, b, open_in(ws / "temp")), "opt")
    assert task["verdict"] == "data_changed"
    assert [(o["path"], o["change"]) for o in task["outputs"]] == [("extra.<run_id>.json", "added")]


def test_markdown_report_has_the_verdict_a_row_per_task_and_the_reasons(ws):
    a = session(ws, [("load", LOAD, {})])
    (ws / "orders.csv").write_text(ORDERS + "9,99,new\n")
    b = session(ws, [("load", LOAD, {})])
    md = compare.render_markdown(compare.compare_sessions(a, b, open_in(ws / "temp")), "t")
    assert "**NOT REPRODUCED**" in md and "| load | 1 | data_changed |" in md
    assert "- output orders_big.<run_id>.csv: 1 row added (keyed by id)" in md


def test_pyx_compare_takes_session_ids_writes_the_report_and_exits_by_verdict(ws, capsys):
    a = session(ws, [("load", LOAD, {})])
    b = session(ws, [("load", LOAD, {})])
    (ws / "orders.csv").write_text(ORDERS + "9,99,new\n")
    c = session(ws, [("load", LOAD, {})])
    d = str(ws / "temp")
    assert pyx(["compare", a[0]["session_id"], b[0]["session_id"], "--dir", d]) == 0
    report = ws / "temp" / f"t1.{b[0]['session_id']}.compare.json"
    assert json.loads(report.read_text())["reproduced"] is True
    assert report.with_suffix(".md").is_file()
    manifest_a = str(ws / "temp" / f"load.{a[0]['run_id']}.manifest.json")
    assert pyx(["compare", manifest_a, c[0]["session_id"], "--dir", d]) == 1
    assert "data_changed  load#1" in capsys.readouterr().out
    assert pyx(["compare", "not-a-session", c[0]["session_id"], "--dir", d]) == 2


REPLAY_SCRIPT = textwrap.dedent("""\
    import pandas as pd
    pyx.save("totals.csv", pd.read_csv("orders.csv").groupby("status", as_index=False).amount.sum())
""")


def test_replay_reruns_a_recorded_task_in_a_new_session_and_compares(ws, capsys):
    (ws / "job.py").write_text(REPLAY_SCRIPT)
    assert pyx(["run", "--file", "job.py", "--dir", "temp", "--topic", "t1"]) == 0
    original = Path(capsys.readouterr().out.strip().splitlines()[-1])
    state = (ws / "temp" / ".session.t1.json").read_text()

    assert pyx(["run", "--replay", str(original)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reproduced: job ")
    assert (ws / "temp" / ".session.t1.json").read_text() == state, "the replay must not hijack the session"

    (ws / "orders.csv").write_text(ORDERS + "4,1,new\n")
    assert pyx(["run", "--replay", str(original)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("data_changed: job ")
    assert "output totals.<run_id>.csv: 1 row changed, changed columns: amount (1) (keyed by status)" in out
    reports = sorted((ws / "temp").glob("t1.*.compare.json"))
    assert len(reports) == 2 and json.loads(reports[-1].read_text())["tasks"][0]["verdict"] == "data_changed"


def test_replay_of_a_missing_manifest_is_a_usage_error(tmp_path):
    assert pyx(["run", "--replay", str(tmp_path / "nope.manifest.json")]) == 2


def test_importing_core_compare_loads_no_ipython_pandas_or_papermill():
    code = ("import sys, pyx_magics.core.compare\n"
            "print(sorted(m for m in ('IPython', 'pandas', 'papermill', 'nbformat') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
