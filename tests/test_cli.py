"""The `pyx` command through subprocesses: run, verify, info, ensure-temp, help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyx_magics.core import manifest

PYX = [sys.executable, "-m", "pyx_magics.cli"]


def pyx(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    full = {**os.environ, **(env or {})}
    full.pop("PYX_DIR", None)
    return subprocess.run([*PYX, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


def script(tmp_path: Path, body: str, name: str = "check.py") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def test_pyx_run_gives_the_script_the_seed_variables_and_records_the_same_manifest(tmp_path):
    script(tmp_path, """
        import json, os
        from pathlib import Path
        params = json.load(open(os.environ["PYX_INPUT_PATH"]))
        out = Path(os.environ["PYX_OUTPUT_DIR"]) / "answer.json"
        out.write_text(json.dumps({"ids": params["entity_ids"], "run": os.environ["PYX_RUN_ID"]}))
        assert os.environ["PYX_OUTPUT_PATH"].endswith(".manifest.json")
        assert os.path.exists(os.environ["PYX_LOG_PATH"])
        pyx.save("declared", {"ok": True})
        print("done", flush=True)
    """)
    (tmp_path / "in.json").write_text('{"entity_ids": [1042], "notes": "n"}')
    r = pyx("run", "--file", "check.py", "--input-path", "in.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    mpath = Path(r.stdout.strip().splitlines()[-1])
    m = manifest.read(mpath)
    assert m["task"] == "check" and m["status"] == "succeeded"
    outs = {o["path"]: o["captured_by"] for o in m["files"]["outputs"]}
    assert outs == {"answer.json": "audit", f"declared.{m['run_id']}.json": "explicit"}
    assert (mpath.parent / m["log"]["path"]).read_text() == "done\n"
    assert json.loads((mpath.parent / "answer.json").read_text())["run"] == m["run_id"]
    assert m["files"]["inputs"] == [], "the script is the code and its input JSON is the input, not files read"
    assert manifest.verify([mpath]).ok


def test_pyx_run_failure_timeout_and_script_args(tmp_path):
    script(tmp_path, "import sys\nprint(sys.argv[1:])\nraise SystemExit(int(sys.argv[1]))\n", "code.py")
    ok = pyx("run", "--file", "code.py", "--", "0", cwd=tmp_path)
    bad = pyx("run", "--file", "code.py", "--", "3", cwd=tmp_path)
    assert ok.returncode == 0 and bad.returncode == 1
    script(tmp_path, "raise ValueError('nope')\n", "raises.py")
    r = pyx("run", "--file", "raises.py", cwd=tmp_path)
    assert r.returncode == 1
    (m,) = [manifest.read(p) for p in (tmp_path / "temp").glob("raises.*.manifest.json")]
    assert m["status"] == "failed" and m["error"]["type"] == "ValueError" and "nope" in m["error"]["message"]
    script(tmp_path, "import time\nprint('start', flush=True)\ntime.sleep(30)\n", "slow.py")
    r = pyx("run", "--file", "slow.py", "--timeout", "1", cwd=tmp_path, timeout=20)
    assert r.returncode == 1
    (m,) = [manifest.read(p) for p in (tmp_path / "temp").glob("slow.*.manifest.json")]
    assert m["status"] == "timed_out"
    assert (tmp_path / "temp" / m["log"]["path"]).read_text() == "start\n"


@pytest.mark.parametrize(
    "args, files, message",
    [
        (["run", "--file", "s.py", "--task", "../x"], {}, "invalid task name"),
        (["run", "--file", "s.py", "--timeout", "0"], {}, "timeout must be a positive"),
        (["run", "--file", "s.py", "--input-path", "in.json"], {"in.json": '{"a":\n  }'}, "line 2, column 3"),
        (["run", "--file", "s.py", "--input-path", "in.json"],
         {"in.json": '{"time_window": {"start": "2026-01-01T00:00", "end": "2026-01-02T00:00"}}'}, "no UTC offset"),
        (["run", "--file", "s.py", "--input-path", "in.json"],
         {"in.json": '{"time_window": {"start": "2026-01-01T00:00", "end": "2026-01-02T00:00", "timezone": "X/Y"}}'},
         "unknown time zone"),
        (["run", "--file", "missing.py"], {}, "not found"),
        (["run", "--file", "s.py", "--input-path", "in.json"], {"in.json": b"\xff\xfe"}, "not valid UTF-8"),
        (["run"], {}, "needs --file"),
        (["verify", "nothing-here"], {}, "no such file"),
        (["frobnicate"], {}, "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_write_nothing(tmp_path, args, files, message):
    (tmp_path / "s.py").write_text("print('ran')\n")
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    r = pyx(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "temp").exists() or not any((tmp_path / "temp").iterdir())


def _run_many(root: str, worker: int, n: int) -> None:
    from pyx_magics.execute import in_process
    from pyx_magics.runner import Session, TaskRequest, run_task

    session = Session.start(root, "load", "local", resume=False)
    for i in range(n):
        src = f"pyx.save('out', {{'worker': {worker}, 'i': {i}}})"
        run_task(session, TaskRequest("same_task", src), in_process(src, {}))


def test_two_processes_running_the_same_task_50_times_give_100_verified_manifests(tmp_path):
    code = "import sys; from tests.test_cli import _run_many; _run_many(sys.argv[1], int(sys.argv[2]), 50)"
    root = tmp_path / "temp"
    repo = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(w)], cwd=repo) for w in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    paths = sorted(root.glob("same_task.*.manifest.json"))
    assert len(paths) == 100
    assert len({manifest.read(p)["run_id"] for p in paths}) == 100
    report = manifest.verify([root])
    assert report.ok and report.checked == 100, [p.message for p in report.problems]
    lines = (root / ".history.jsonl").read_text().splitlines()
    assert len(lines) == 100 and all(json.loads(line)["task"] == "same_task" for line in lines)
    for p in paths:
        assert len(manifest.read(p)["files"]["outputs"]) == 1, "another process's files leaked into a manifest"


def _one_run(tmp_path: Path) -> tuple[Path, dict]:
    script(tmp_path, "pyx.save('rows', 'a,b\\n1,2\\n')\nprint('log line')\n", "t.py")
    r = pyx("run", "--file", "t.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    mpath = Path(r.stdout.strip().splitlines()[-1])
    return mpath, manifest.read(mpath)


def test_verify_exits_1_naming_a_changed_output(tmp_path):
    mpath, m = _one_run(tmp_path)
    assert pyx("verify", str(mpath.parent), cwd=tmp_path).returncode == 0
    out = mpath.parent / m["files"]["outputs"][0]["path"]
    data = bytearray(out.read_bytes())
    data[0] ^= 1
    out.write_bytes(bytes(data))
    r = pyx("verify", str(mpath), cwd=tmp_path)
    assert r.returncode == 1 and f"{out.name}: changed" in r.stdout


def test_verify_exits_1_naming_a_deleted_log_and_an_edited_manifest(tmp_path):
    mpath, m = _one_run(tmp_path)
    (mpath.parent / m["log"]["path"]).unlink()
    r = pyx("verify", str(mpath), cwd=tmp_path)
    assert r.returncode == 1 and f"{m['log']['path']}: missing" in r.stdout
    mpath2, m2 = _one_run(tmp_path)
    m2["status"] = "failed"
    mpath2.write_text(json.dumps(m2))
    r = pyx("verify", str(mpath2), cwd=tmp_path)
    assert r.returncode == 1 and "integrity" in r.stdout


def test_info_lists_variable_names_but_never_values(tmp_path):
    env = {"DB_PASSWORD": "hunter2-secret-value", "DATABASE_URL": "postgresql://u:pw-zzz-123@127.0.0.1:1/db",
           "KAFKA_BROKERS": "127.0.0.1:1"}
    r = pyx("info", "--json", cwd=tmp_path, env=env)
    assert r.returncode == 0
    data = json.loads(r.stdout)
    assert "DB_PASSWORD" in data["variables"] and "DATABASE_URL" in data["variables"]
    assert "hunter2" not in r.stdout and "pw-zzz" not in r.stdout
    assert data["endpoints"]["kafka"][0]["listening"] is False
    text = pyx("info", cwd=tmp_path, env=env).stdout
    assert "NOTHING LISTENING" in text and "hunter2" not in text


def test_ensure_temp_creates_the_directory(tmp_path):
    r = pyx("ensure-temp", "--dir", "evidence", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "evidence").is_dir()


@pytest.mark.parametrize("command", [[], ["run"], ["verify"], ["info"], ["ensure-temp"], ["services"], ["env"],
                                     ["kernel"], ["kernel", "install"], ["rerun"], ["compare"], ["export"],
                                     ["learn"], ["demo"]])
def test_every_command_has_help(tmp_path, command):
    r = pyx(*command, "--help", cwd=tmp_path)
    assert r.returncode == 0 and "usage: pyx" in r.stdout


def test_verify_catches_a_deleted_run_in_the_middle_of_a_session_chain(tmp_path):
    from pyx_magics.execute import in_process
    from pyx_magics.runner import Session, TaskRequest, run_task

    session = Session.start(tmp_path / "temp", "chain", "local", resume=False)
    paths = []
    for i in range(3):
        run, _ = run_task(session, TaskRequest(f"step{i}", "x = 1"), in_process("x = 1", {}))
        paths.append(run.manifest_path)
    assert manifest.verify([tmp_path / "temp"]).ok
    paths[1].unlink()
    report = manifest.verify([tmp_path / "temp"])
    assert not report.ok
    assert [p.manifest for p in report.problems if "chain broken" in p.message] == [paths[2].name]
