"""`pyx rerun` on the real pyx kernel through papermill: parameters, new sessions, compare, redaction, batch, Dask."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from pyx_magics import rerun
from pyx_magics.cli import main as pyx

pytestmark = pytest.mark.slow

PARAMS = 'topic = "rr"\ndata_path = "orders.csv"\nthreshold = 10\nregion = "eu"\nfail = False\napi_token = ""\n'
LOAD = """%%pyx_run load
import json
import pandas as pd
df = pd.read_csv(data_path)
big = df[df.amount >= threshold]
pyx.save("orders_big.csv", big)
pyx.save("stats.json", {"n": len(big), "region": region, "total": int(big.amount.sum())})
with open(pyx.out("events.jsonl"), "w") as f:
    for r in big.itertuples():
        f.write(json.dumps({"id": int(r.id), "amount": int(r.amount)}) + "\\n")
"""
OTHER = '%%pyx_run other\nimport pandas as pd\npyx.save("customers.csv", pd.read_csv("customers.csv"))\n'
BOOM = '%%pyx_run boom\nif fail:\n    raise RuntimeError("asked to fail")\nprint("token", api_token)\n'
AFTER = '%%pyx_run after\nprint("after")\n'
ORDERS = "id,amount,status\n1,5,new\n2,15,paid\n3,25,paid\n"
SECRET = "tok-9f8e7d6c5b4a"


def build_workspace(root: Path) -> Path:
    cells = [new_code_cell(PARAMS, metadata={"tags": ["parameters"]}), new_code_cell("import pandas as pd"),
             new_code_cell(LOAD), new_code_cell(OTHER), new_code_cell(BOOM), new_code_cell(AFTER)]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "pyx", "display_name": "pyx",
                                                            "language": "python"}})
    root.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, root / "incident.ipynb")
    (root / "orders.csv").write_text(ORDERS)
    (root / "customers.csv").write_text("id,name\n1,ann\n2,bob\n")
    return root / "incident.ipynb"


def papermill_run(notebook: Path, output: Path, params: dict[str, Any]) -> None:
    """An original run: plain papermill on the pyx kernel (the way a scheduled notebook runs)."""
    import papermill as pm

    pm.execute_notebook(str(notebook), str(output), parameters=params, kernel_name="pyx", progress_bar=False,
                        request_save_on_cell_execute=False, cwd=str(notebook.parent))


@pytest.fixture(scope="module")
def kernel_env(pyx_kernel_env: dict[str, str]) -> Iterator[dict[str, str]]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in pyx_kernel_env.items():
            mp.setenv(key, value)
        for key in ("PYX_DIR", "PYX_TOPIC", "PYX_SESSION_ID"):
            mp.delenv(key, raising=False)
        yield pyx_kernel_env


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, kernel_env: dict[str, str]) -> Path:
    """A workspace whose notebook ran once under papermill with default parameters."""
    ws = tmp_path_factory.mktemp("original")
    nb = build_workspace(ws)
    papermill_run(nb, ws / "original.ipynb", {})
    return ws


@pytest.fixture
def ws(original: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the original workspace (notebooks, data, temp/ with its evidence)."""
    target = tmp_path / "ws"
    shutil.copytree(original, target)
    monkeypatch.chdir(target)
    return target


def last_report(ws: Path) -> dict[str, Any]:
    reports = sorted((ws / "temp").glob("rr.*.compare.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(reports[-1].read_text())


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {t["task"]: t["verdict"] for t in report["tasks"]}


def test_rerun_on_unchanged_data_reproduces_under_a_new_session(ws):
    state = (ws / "temp" / ".session.rr.json").read_text()
    assert pyx(["rerun", str(ws / "original.ipynb")]) == 0
    assert (ws / "temp" / ".session.rr.json").read_text() == state, "the investigation's session stays current"
    report = last_report(ws)
    assert verdicts(report) == dict.fromkeys(("load", "other", "boom", "after"), "reproduced")
    a, b = report["a"]["session_id"], report["b"]["session_id"]
    assert a and b and a != b, "the re-run must be a new session"
    assert (ws / "temp" / f"rr.{b}.compare.md").is_file()
    out = nbformat.read(ws / "temp" / f"rr.{b}.rerun.ipynb", as_version=4)
    assert out.metadata.pyx["session_id"] == b and out.metadata.pyx["rerun_of"] == a


def test_a_changed_input_file_names_exactly_the_affected_outputs(ws):
    (ws / "orders.csv").write_text(ORDERS.replace("3,25,paid", "3,30,paid") + "4,50,new\n")
    assert pyx(["rerun", str(ws / "original.ipynb")]) == 1
    report = last_report(ws)
    assert verdicts(report) == {"load": "data_changed", "other": "reproduced", "boom": "reproduced",
                                "after": "reproduced"}
    load = next(t for t in report["tasks"] if t["task"] == "load")
    assert sorted(o["path"] for o in load["outputs"]) == ["events.<run_id>.jsonl", "orders_big.<run_id>.csv",
                                                         "stats.<run_id>.json"]
    big = next(o for o in load["outputs"] if o["kind"] == "csv")
    assert (big["rows_added"], big["rows_removed"], big["rows_changed"]) == (1, 0, 1)
    assert "input file(s) changed: ../orders.csv" in load["reasons"]


def test_a_single_override_keeps_every_other_parameter_of_a_non_default_original(ws):
    papermill_run(ws / "incident.ipynb", ws / "custom.ipynb", {"threshold": 20, "region": "us"})
    assert pyx(["rerun", str(ws / "custom.ipynb"), "-p", "region", "apac", "--output", "again.ipynb"]) == 1
    out = nbformat.read(ws / "again.ipynb", as_version=4)
    assert out.metadata.papermill.parameters == {"threshold": 20, "region": "apac"}
    injected = next(c for c in out.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "threshold = 20\n" in injected.source and 'region = "apac"\n' in injected.source
    report = last_report(ws)
    load = next(t for t in report["tasks"] if t["task"] == "load")
    assert load["verdict"] == "data_changed"
    stats = next(o for o in load["outputs"] if o["kind"] == "json")
    assert stats["paths"] == [{"path": "$.region", "change": "changed"}]
    assert "notebook variable(s) read changed: region" in load["reasons"]


def test_an_unknown_parameter_name_is_a_usage_error_before_anything_runs(ws, capsys):
    before = sorted(p.name for p in (ws / "temp").iterdir())
    assert pyx(["rerun", str(ws / "original.ipynb"), "-p", "treshold", "5"]) == 2
    assert "unknown parameter(s) treshold" in capsys.readouterr().err
    assert sorted(p.name for p in (ws / "temp").iterdir()) == before


def test_a_secret_named_parameter_never_reaches_disk(ws):
    assert pyx(["rerun", str(ws / "original.ipynb"), "-p", "api_token", SECRET, "--output", "s.ipynb"]) == 0
    out = nbformat.read(ws / "s.ipynb", as_version=4)
    assert out.metadata.papermill.parameters["api_token"] == "[REDACTED]"
    injected = next(c for c in out.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'api_token = "[REDACTED]"' in injected.source
    leaks = [p for p in ws.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []
    boom = next(m for m in rerun.session_manifests(ws / "temp", out.metadata.pyx["session_id"]) if m["task"] == "boom")
    assert (ws / "temp" / boom["log"]["path"]).read_text() == "token [REDACTED]\n"


def test_a_failing_cell_gives_a_partial_notebook_and_a_failed_task(ws):
    assert pyx(["rerun", str(ws / "original.ipynb"), "-p", "fail", "True", "--output", "partial.ipynb"]) == 1
    out = nbformat.read(ws / "partial.ipynb", as_version=4)
    code = [c for c in out.cells if c.cell_type == "code"]
    boom = next(c for c in code if c.source.startswith("%%pyx_run boom"))
    after = next(c for c in code if c.source.startswith("%%pyx_run after"))
    assert any("asked to fail" in "".join(o.get("text", "")) + str(o.get("data", "")) for o in boom.outputs)
    assert after.execution_count is None and after.outputs == []
    report = last_report(ws)
    assert verdicts(report) == {"load": "reproduced", "other": "reproduced", "boom": "failed", "after": "missing"}
    assert report["rerun"]["status"] == "failed"


BATCH = "threshold,fail\n5,False\n10,True\n20,\n"


@pytest.fixture(scope="module")
def batch(original: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, list[str]]:
    """`pyx rerun --batch` (process pool) over three rows, the second failing: (workspace, exit code, stdout)."""
    ws = tmp_path_factory.mktemp("batch") / "ws"
    shutil.copytree(original, ws)
    (ws / "rows.csv").write_text(BATCH)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = pyx(["rerun", str(ws / "original.ipynb"), "--batch", str(ws / "rows.csv"), "--workers", "2"])
    return ws, code, out.getvalue().splitlines()


def test_batch_runs_every_row_and_one_failing_row_does_not_stop_the_others(batch):
    _, code, table = batch
    assert code == 1
    assert table[0].split() == ["row", "status", "output", "duration_s", "error"]
    rows = {line.split()[0]: line.split()[1] for line in table[1:4]}
    assert rows == {"1": "succeeded", "2": "failed", "3": "succeeded"}
    assert "CellExecutionError" in table[2] and table[-1] == "2 of 3 job(s) succeeded"
    outputs = [Path(line.split()[2]) for line in table[1:4]]
    assert all(p.is_file() for p in outputs) and len(set(outputs)) == 3
    params = [nbformat.read(p, as_version=4).metadata.papermill.parameters for p in outputs]
    assert [p["threshold"] for p in params] == [5, 10, 20]
    assert params[1]["fail"] is True and "fail" not in params[2], "an empty cell keeps the recorded value"


def row_evidence(ws: Path, sessions: list[str]) -> list[list[tuple[str, str, str]]]:
    """Per row: each task's (name, status, output digest) in the row's own session."""
    return [[(m["task"], m["status"], m["compare"]["output_digest"]) for m in rerun.session_manifests(ws / "temp", s)]
            for s in sessions]


def test_a_dask_cluster_gives_the_same_results_as_the_process_pool(batch):
    distributed = pytest.importorskip("distributed", reason="needs the dask extra: pip install 'pyx-magics[dask]'")
    ws, _, table = batch
    pool_sessions = [rerun.RUN_ID_RE.findall(line.split()[2])[-1] for line in table[1:4]]
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=2,
                                  dashboard_address=None) as cluster:
        results = rerun.run_batch(str(ws / "original.ipynb"), rerun.load_batch(str(ws / "rows.csv")), {},
                                  executor="dask", scheduler=cluster.scheduler_address, progress=False)
    assert [(r.row, r.status) for r in results] == [(1, "succeeded"), (2, "failed"), (3, "succeeded")]
    pool, dask = row_evidence(ws, pool_sessions), row_evidence(ws, [r.session_id for r in results])
    assert [len(runs) for runs in pool] == [4, 3, 4]
    assert dask == pool
