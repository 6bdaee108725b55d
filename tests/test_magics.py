"""%%pyx_run and friends in a real IPython InteractiveShell."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import urllib.parse
from pathlib import Path

import pytest

from pyx_magics.core import manifest


@pytest.fixture
def shell(pyx_shell):
    return pyx_shell


def manifests(root: Path, task: str | None = None) -> list[dict]:
    pattern = f"{task}.*.manifest.json" if task else "*.manifest.json"
    return [manifest.read(p) for p in sorted(root.glob(pattern))]


def run(ip, cell: str, line: str = "t1"):
    return ip.run_cell(f"%%pyx_run {line}\n{cell}")


def test_a_cell_becomes_evidence_code_input_manifest_log_outputs(shell, tmp_path):
    r = run(shell, "print('hello')\nresult = pyx.save('orders', {'id': 1042, 'status': 'PAID'})",
            "check_order --param order_id=1042 --param notes=first")
    assert r.success
    root = tmp_path / "temp"
    (m,) = manifests(root, "check_order")
    assert m["status"] == "succeeded" and m["error"] is None
    assert (root / "check_order.py").read_text().startswith("print('hello')")
    assert json.loads((root / "check_order.input.json").read_text()) == {"order_id": 1042, "notes": "first"}
    assert (root / m["log"]["path"]).read_text() == "hello\n"
    (out,) = m["files"]["outputs"]
    assert out["path"] == f"orders.{m['run_id']}.json" and out["captured_by"] == "explicit"
    assert not manifest.schema_errors(m)
    assert manifest.verify([root]).ok
    hist = [json.loads(line) for line in (root / ".history.jsonl").read_text().splitlines()]
    assert hist[-1]["run_id"] == m["run_id"] and hist[-1]["status"] == "succeeded"


def test_manifest_says_running_and_log_is_on_disk_while_the_cell_runs(shell, tmp_path):
    cell = (
        "import json\n"
        "print('first line', flush=True)\n"
        "m = json.load(open(pyx.dir / f'live.{pyx.run_id}.manifest.json'))\n"
        "log = open(pyx.dir / f'live.{pyx.run_id}.log.txt').read()\n"
        "pyx.save('seen', {'status': m['status'], 'log': log})\n"
    )
    assert run(shell, cell, "live").success
    (m,) = manifests(tmp_path / "temp", "live")
    seen = json.loads((tmp_path / "temp" / m["files"]["outputs"][0]["path"]).read_text())
    assert seen == {"status": "running", "log": "first line\n"}


def test_files_written_with_open_and_to_csv_are_captured_with_their_hash(shell, tmp_path):
    cell = (
        "import pandas as pd\n"
        "with open('temp/plain.txt', 'w') as f:\n    f.write('abc')\n"
        "pd.DataFrame({'a': [1, 2, 3]}).to_csv('temp/frame.csv', index=False)\n"
    )
    assert run(shell, cell, "writes").success
    (m,) = manifests(tmp_path / "temp", "writes")
    outs = {o["path"]: o for o in m["files"]["outputs"]}
    from pyx_magics.core.hashing import sha256_file

    for name in ("plain.txt", "frame.csv"):
        assert outs[name]["sha256"] == sha256_file(tmp_path / "temp" / name)[0]
        assert outs[name]["captured_by"] in ("audit", "dir_diff")
    assert outs["frame.csv"]["rows"] == 3


def test_files_read_by_the_cell_are_inputs(shell, tmp_path):
    (tmp_path / "data.csv").write_text("a\n1\n")
    assert run(shell, "import pandas as pd\ndf = pd.read_csv('data.csv')", "reads").success
    (m,) = manifests(tmp_path / "temp", "reads")
    assert [i["path"] for i in m["files"]["inputs"]] == ["../data.csv"]


def test_namespace_reads_and_writes_are_summarised_without_values(shell, tmp_path):
    shell.user_ns["orders"] = [1, 2, 3]
    assert run(shell, "total = sum(orders)\nimport math", "ns").success
    (m,) = manifests(tmp_path / "temp", "ns")
    assert [r["name"] for r in m["namespace"]["reads"]] == ["orders"]
    assert [w["name"] for w in m["namespace"]["writes"]] == ["total"]
    assert m["namespace"]["reads"][0]["summary"].startswith("len=3")
    assert "6" not in m["namespace"]["writes"][0]["summary"].split("sha=")[0]


def test_a_failing_cell_records_failed_with_traceback_and_keeps_the_log(shell, tmp_path):
    r = run(shell, "print('before')\n1/0", "boom")
    assert not r.success
    (m,) = manifests(tmp_path / "temp", "boom")
    assert m["status"] == "failed"
    assert m["error"]["type"] == "ZeroDivisionError"
    assert "1/0" in m["error"]["traceback"]
    log = (tmp_path / "temp" / m["log"]["path"]).read_text()
    assert log.startswith("before\n") and "ZeroDivisionError" in log


def test_keyboard_interrupt_and_timeout_are_distinct_statuses(shell, tmp_path):
    assert not run(shell, "raise KeyboardInterrupt", "stopped").success
    assert not run(shell, "import time\ntime.sleep(10)", "slow --timeout 0.3").success
    (stopped,) = manifests(tmp_path / "temp", "stopped")
    (slow,) = manifests(tmp_path / "temp", "slow")
    assert stopped["status"] == "interrupted"
    assert slow["status"] == "timed_out"
    assert slow["timing"]["duration_ms"] < 5000


def test_secret_canaries_reach_no_file(shell, tmp_path, monkeypatch):
    pw = "pw-" + secrets.token_urlsafe(12)
    token = "tk-" + secrets.token_urlsafe(16)
    monkeypatch.setenv("DB_PASSWORD", pw)
    monkeypatch.setenv("API_TOKEN", token)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{pw}x@127.0.0.1:5/db")
    shell.run_line_magic("pyx_topic", "canary --new")  # the redactor reads env when a session starts
    cell = (
        "import os, pandas as pd\n"
        "print(os.environ['DB_PASSWORD'], os.environ['API_TOKEN'], os.environ['DATABASE_URL'])\n"
        "pyx.save('leak', {'pw': os.environ['DB_PASSWORD'], 'nested': [os.environ['API_TOKEN']]})\n"
        "pyx.save('frame', pd.DataFrame({'t': [os.environ['API_TOKEN']]}))\n"
        "raise RuntimeError('failed with ' + os.environ['DB_PASSWORD'])\n"
    )
    run(shell, cell, f"leaky --param note_pw={pw}")
    needles = set()
    for value in (pw, token, pw + "x"):
        needles |= {value, urllib.parse.quote(value), base64.b64encode(value.encode()).decode()}
    found = []
    for path in (tmp_path / "temp").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [(path.name, n) for n in needles if n.encode() in data]
    assert not found
    (m,) = manifests(tmp_path / "temp", "leaky")
    assert sum(m["redaction"]["counts"].values()) >= 5
    assert len(m["files"]["outputs"]) == 2


@pytest.mark.parametrize(
    "line, message",
    [
        ("../escape", "invalid task name"),
        ("/abs", "invalid task name"),
        ("a..b", "invalid task name"),  # a bare task name: parsed without argparse, checked all the same
        ("x" * 101, "invalid task name"),
        ("", "task"),
        ("ok --timeout 0", "timeout must be a positive"),
        ("ok --timeout -3", "timeout must be a positive"),
        ("ok --param 'time_window={\"start\":\"2026-01-02T00:00Z\",\"end\":\"2026-01-01T00:00Z\"}'", "before start"),
        ("ok --param bad", "KEY=VALUE"),
        ("ok --input missing.json", "not found"),
    ],
)
def test_user_mistakes_are_one_line_usage_errors_and_write_nothing(shell, tmp_path, capsys, line, message):
    r = shell.run_cell(f"%%pyx_run {line}\nprint('must not run')")
    assert not r.success
    assert type(r.error_in_exec).__name__ == "UsageError"
    assert message in str(r.error_in_exec)
    captured = capsys.readouterr()
    assert "must not run" not in captured.out and "Traceback" not in captured.out + captured.err
    assert not list((tmp_path / "temp").glob("*.manifest.json")) if (tmp_path / "temp").exists() else True


def test_a_bare_task_name_takes_every_default(shell, tmp_path):
    assert shell.run_cell("%%pyx_run   spaced  \nx = 1").success
    (m,) = manifests(tmp_path / "temp", "spaced")
    assert m["status"] == "succeeded" and m["input"]["params"] == {} and m["mode"]["access"] == "read_only"


def test_invalid_input_file_names_line_and_column(shell, tmp_path):
    (tmp_path / "in.json").write_text('{"a": 1,\n "b": oops}')
    r = shell.run_cell("%%pyx_run ok --input in.json\n1")
    assert "line 2, column 7" in str(r.error_in_exec)


def test_summary_is_shown_as_html_in_notebooks_and_text_in_terminals(shell, tmp_path):
    from pyx_magics.display import TaskSummary

    run(shell, "pyx.save('x', 'text')", "shown")
    (m,) = manifests(tmp_path / "temp", "shown")
    s = TaskSummary(m)
    assert "succeeded" in repr(s) and f"x.{m['run_id']}.txt" in repr(s)
    assert 'data-status="succeeded"' in s._repr_html_() and "<table>" in s._repr_html_()


def test_help_comes_from_the_argument_parser(shell):
    doc = shell.find_cell_magic("pyx_run").__doc__
    for option in ("--input", "--param", "--timeout", "--allow-write"):
        assert option in doc


def test_loading_twice_is_harmless_and_unload_removes_the_magics(shell):
    shell.run_line_magic("load_ext", "pyx_magics")
    shell.extension_manager.load_extension("pyx_magics")
    assert shell.find_cell_magic("pyx_run") is not None
    shell.run_line_magic("unload_ext", "pyx_magics")
    assert shell.find_cell_magic("pyx_run") is None
    assert shell.find_line_magic("pyx_topic") is None
    shell.run_line_magic("load_ext", "pyx_magics")
    assert shell.find_cell_magic("pyx_run") is not None


def test_sequence_and_integrity_chain_link_runs_of_a_session(shell, tmp_path):
    shell.run_line_magic("pyx_topic", "chain --new")
    for i in range(3):
        assert run(shell, f"x = {i}", f"step{i}").success
    ms = sorted(manifests(tmp_path / "temp"), key=lambda m: m["sequence"])
    assert [m["sequence"] for m in ms] == [1, 2, 3]
    assert ms[0]["integrity"]["prev_manifest_sha256"] is None
    for prev, cur in zip(ms, ms[1:], strict=False):
        assert cur["integrity"]["prev_manifest_sha256"] == prev["integrity"]["manifest_sha256"]
    assert {m["topic"] for m in ms} == {"chain"}


def test_huge_output_is_fully_logged_but_truncated_live(shell, tmp_path, capsys, monkeypatch):
    import pyx_magics.runner as runner

    monkeypatch.setattr(runner, "LIVE_LIMIT", 1000)
    assert run(shell, "for i in range(2000):\n    print('line', i)", "loud").success
    (m,) = manifests(tmp_path / "temp", "loud")
    log = (tmp_path / "temp" / m["log"]["path"]).read_text()
    assert log.count("\n") == 2000 and "line 1999" in log
    shown = capsys.readouterr().out
    assert "line 1999" not in shown and "output truncated" in shown and m["log"]["truncated"] is True
    assert os.path.getsize(tmp_path / "temp" / m["log"]["path"]) == m["log"]["bytes"]


def test_manifest_records_the_cell_number_the_user_sees(shell, tmp_path):
    shell.run_cell("a = 1", store_history=True)
    shell.run_cell("%%pyx_run numbered\nb = 2", store_history=True)
    (m,) = manifests(tmp_path / "temp", "numbered")
    assert m["code"]["execution_count"] == 2


def test_pyx_export_writes_reports_of_the_live_session_from_the_journal(shell, tmp_path, capsys):
    shell.run_line_magic("pyx_topic", "live-export --new")
    shell.run_cell("%pyx_note problem order 1042 shows PENDING")
    assert run(shell, "pyx.save('x', {'a': 1})", "step_one").success
    shell.run_cell("%pyx_note root_cause the cache was stale")
    assert shell.run_cell("%pyx_export all").success
    root = tmp_path / "temp"
    (inspect,) = root.glob("live-export.*.inspect.md")
    text = inspect.read_text()
    assert "order 1042 shows PENDING" in text and "step_one" in text and "the cache was stale" in text
    assert list(root.glob("live-export.*.summary.md")) and list(root.glob("live-export.*.learn"))
    assert "wrote temp/live-export" in capsys.readouterr().out
    r = shell.run_cell("%pyx_export all --notebook missing.ipynb")
    assert type(r.error_in_exec).__name__ == "UsageError"


def test_notes_take_owner_due_for_actions_and_evidence_for_any_kind():
    from pyx_magics.core.errors import UsageProblem
    from pyx_magics.magics import build_note

    note = build_note("action", ["Alert", "on", "lag", "owner=alice", "due=2026-12-11", "evidence=consumer_lag,events"])
    assert (note["owner"], note["due"], note["evidence"]) == ("alice", "2026-12-11", ["consumer_lag", "events"])
    assert note["text"] == "Alert on lag"
    assert build_note("root_cause", ["stalled", "evidence=lag"])["evidence"] == ["lag"]
    for bad in (("finding", ["x", "owner=bob"]), ("action", ["x", "due=tomorrow"]), ("nope", ["x"]),
                ("finding", ["x", "evidence=../etc"]), ("finding", ["owner=a"])):
        with pytest.raises(UsageProblem):
            build_note(*bad)


def test_a_note_naming_its_evidence_links_to_those_steps_in_the_reports(shell, tmp_path):
    from pyx_magics.report.model import load_session

    shell.run_line_magic("pyx_topic", "linked --new")
    for task in ("first", "second", "third"):
        assert run(shell, "x = 1", task).success
    shell.run_cell("%pyx_note root_cause it was the first one evidence=first")
    s = shell._pyx_magics.session
    inv = load_session(s.dir, s.topic, s.session_id)
    (note,) = [n for n in inv.notes if n.kind == "root_cause"]
    assert [st.task for st in note.steps] == ["first"]


def test_quoted_magic_arguments_are_recorded_without_their_quotes(shell, tmp_path):
    assert run(shell, "x = 1", 'quoted --allow-write "INC-1042: fix the cache" --param note="two words"').success
    (m,) = manifests(tmp_path / "temp", "quoted")
    assert m["mode"] == {"access": "write", "reason": "INC-1042: fix the cache"}
    assert m["input"]["params"]["note"] == "two words"
    r = shell.run_cell('%%pyx_run bad --allow-write "unbalanced\n1')
    assert type(r.error_in_exec).__name__ == "UsageError"


def test_the_last_value_is_shown_and_displays_are_redacted(shell, tmp_path, monkeypatch):
    secret = "dsp-" + secrets.token_urlsafe(12)
    monkeypatch.setenv("SHOWN_TOKEN", secret)
    shell.run_line_magic("pyx_topic", "shown --new")
    published: list[dict] = []
    original = shell.display_pub.publish

    def spy(data, *a, **k):
        published.append(data)
        return original(data, *a, **k)

    monkeypatch.setattr(shell.display_pub, "publish", spy)
    cell = ("import os, pandas as pd\nfrom IPython.display import display\n"
            "display(pd.DataFrame({'t': [os.environ['SHOWN_TOKEN']]}))\n"
            "{'value': os.environ['SHOWN_TOKEN'], 'n': 42}")
    assert run(shell, cell, "shown").success
    blob = json.dumps(published)
    assert secret not in blob and "[REDACTED]" in blob
    assert any("42" in d.get("text/plain", "") for d in published), "the last expression is displayed"


def test_pyx_env_names_a_tunnel_that_is_down_and_hides_secret_values(shell, capsys, monkeypatch):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    up = listener.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        down = probe.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:hunter2-pw@127.0.0.1:{up}/db")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{down}/0")
    monkeypatch.delenv("KAFKA_BROKERS", raising=False)
    shell.run_line_magic("pyx_topic", "envcheck --env staging --new")
    capsys.readouterr()
    shell.run_line_magic("pyx_env", "")
    out = capsys.readouterr().out
    listener.close()
    assert "STAGING" in out
    assert f"127.0.0.1:{up}  from DATABASE_URL  listening" in out
    assert f"127.0.0.1:{down}  from REDIS_URL  NOTHING LISTENING - is the tunnel up?" in out
    assert "hunter2" not in out


def test_the_notebook_jupyter_names_is_recorded_relative_never_absolute(shell, tmp_path, monkeypatch):
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "incidents" / "order-1042.ipynb"))
    assert run(shell, "x = 1", "from_nb").success
    monkeypatch.setenv("JPY_SESSION_NAME", "/elsewhere/home/alice/triage.ipynb")
    assert run(shell, "x = 1", "from_elsewhere").success
    monkeypatch.delenv("JPY_SESSION_NAME")
    assert run(shell, "x = 1", "from_shell").success
    root = tmp_path / "temp"
    assert manifests(root, "from_nb")[0]["code"]["notebook"] == "incidents/order-1042.ipynb"
    assert manifests(root, "from_elsewhere")[0]["code"]["notebook"] == "triage.ipynb"
    assert manifests(root, "from_shell")[0]["code"]["notebook"] is None


def test_a_log_removed_while_the_task_runs_is_replaced_by_an_empty_one(shell, tmp_path):
    assert run(shell, "import os\nprint('gone soon')\nos.remove(pyx._run.log_path)", "unlogged").success
    (m,) = manifests(tmp_path / "temp", "unlogged")
    log = tmp_path / "temp" / m["log"]["path"]
    assert log.read_bytes() == b""
    assert m["log"] == {"path": log.name, "sha256": hashlib.sha256(b"").hexdigest(), "bytes": 0, "truncated": False}
