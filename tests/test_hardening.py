"""Hardening (issue 8): crashes, load, hostile input. Real kernels, real processes, real servers.

Covered elsewhere and not repeated here: binary Redis values
(``test_redis.py::test_inspect_a_binary_value_is_base64_not_a_crash``), non-UTF-8 Kafka payloads
(``test_kafka.py::test_non_utf8_text_headers_and_secrets_in_messages``), tampered evidence
(``test_tamper.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from pyx_magics import cli
from pyx_magics.core import manifest
from pyx_magics.core.errors import InputError, UsageProblem
from pyx_magics.core.inputs import MAX_INPUT_BYTES
from pyx_magics.runner import Session, TaskRequest

PYTHON = sys.executable


# ---------------------------------------------------------------- helpers


def listing(root: Path) -> list[str]:
    """Every entry under ``root`` (hidden ones included), relative, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def assert_nothing_half_written(root: Path) -> None:
    """No temp files left by an interrupted atomic write, and every manifest final and intact."""
    names = listing(root)
    assert not [n for n in names if n.endswith(".tmp")], names
    report = manifest.verify([root]) if list(root.glob("*.manifest.json")) else manifest.VerifyReport()
    assert report.ok, report.problems


def manifests(root: Path, task: str | None = None) -> list[dict[str, Any]]:
    return [manifest.read(p) for p in sorted(root.glob(f"{task or '*'}.*.manifest.json"))]


@pytest.fixture
def shell(pyx_shell: InteractiveShell) -> InteractiveShell:
    return pyx_shell


def run_cell(ip: InteractiveShell, task_line: str, body: str) -> Any:
    return ip.run_cell(f"%%pyx_run {task_line}\n{body}")


def usage_error(result: Any) -> str:
    """The one-line UsageError a magic raised (fails if it raised anything else)."""
    assert not result.success
    assert type(result.error_in_exec).__name__ == "UsageError", repr(result.error_in_exec)
    return str(result.error_in_exec)


def failed_with(root: Path, task: str, error_type: str) -> dict[str, Any]:
    """The one manifest of ``task``: failed with ``error_type``, no outputs, intact."""
    (m,) = manifests(root, task)
    assert m["status"] == "failed" and m["error"]["type"] == error_type, m["error"]
    assert m["files"]["outputs"] == []
    return m


def pyx_cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``pyx ARGS`` through the CLI entry point (in process: refusals never start a child)."""
    code = cli.main(list(args))
    cap = capsys.readouterr()
    return code, cap.out + cap.err


# ---------------------------------------------------------------- 1. crash


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


BURST = 2000  # lines task ``first`` prints in one burst (batched writes: see capture.WriteBatch)
FIRST_OUTPUT: list[str] = []  # what the kernel sent as that cell's stream output


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory, pyx_kernel_env: dict[str, str]) -> Path:
    """An investigation whose real pyx kernel was SIGKILLed in the middle of a printing task.

    Before the kill, task ``first`` succeeded; task ``slow`` printed three lines and slept.
    """
    from jupyter_client.manager import KernelManager

    work = tmp_path_factory.mktemp("crash")
    root = work / "inv"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**pyx_kernel_env, "PYX_DIR": str(root)}.items():
            mp.setenv(key, value)
        mp.delenv("PYX_TOPIC", raising=False)
        km = KernelManager(kernel_name="pyx")
        km.start_kernel(cwd=str(work), env=dict(os.environ))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive("%pyx_topic crash", timeout=60)
        assert reply["content"]["status"] == "ok"
        reply = kc.execute_interactive(
            f"%%pyx_run first\nfor i in range({BURST}):\n    print('burst', i)\npyx.save('early', {{'a': 1}})",
            timeout=60, output_hook=lambda msg: FIRST_OUTPUT.append(msg["content"].get("text", "")))
        assert reply["content"]["status"] == "ok"
        kc.execute("%%pyx_run slow\nimport time\nfor i in range(3):\n    print('line', i, flush=True)\n"
                   "time.sleep(600)\n")
        log = _wait_for(lambda: next(root.glob("slow.*.log.txt"), None), 30, "the log of the slow task")
        _wait_for(lambda: log.read_text().count("\n") >= 3, 30, "three lines in the log")
        (running,) = manifests(root, "slow")
        pid = running["process"]["pid"]
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: not km.is_alive(), 30, "the kernel to die")
    finally:
        kc.stop_channels()
        with contextlib.suppress(Exception):
            km.shutdown_kernel(now=True)
    return root


def copy_of(root: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "inv"
    shutil.copytree(root, dest, symlinks=True)
    return dest


def test_a_kernel_killed_mid_task_leaves_a_running_manifest_the_log_so_far_and_earlier_evidence_intact(crashed):
    (slow,) = manifests(crashed, "slow")
    assert slow["status"] == "running" and slow["timing"]["ended_at"] is None
    assert (crashed / slow["log"]["path"]).read_text() == "line 0\nline 1\nline 2\n"
    (first,) = manifests(crashed, "first")
    report = manifest.verify([crashed / manifest.manifest_name("first", first["run_id"])])
    assert report.ok and report.problems == []
    assert json.loads((crashed / first["files"]["outputs"][0]["path"]).read_text()) == {"a": 1}
    assert not [n for n in listing(crashed) if n.endswith(".tmp")]


def test_a_burst_of_prints_in_a_kernel_reaches_the_log_and_the_cell_output_whole_and_in_order(crashed):
    (first,) = manifests(crashed, "first")
    expected = "".join(f"burst {i}\n" for i in range(BURST))
    assert (crashed / first["log"]["path"]).read_text() == expected
    assert "".join(FIRST_OUTPUT).startswith(expected)  # then the task summary; nothing went to another cell


def test_pyx_verify_marks_the_killed_run_interrupted_as_a_note_and_exits_0(crashed, tmp_path):
    root = copy_of(crashed, tmp_path)
    r = subprocess.run([PYTHON, "-m", "pyx_magics.cli", "verify", str(root)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "interrupted: process gone" in r.stdout and "ERROR" not in r.stdout
    (slow,) = manifests(root, "slow")
    assert slow["status"] == "interrupted" and slow["error"]["type"] == "Interrupted"
    assert "process gone" in slow["error"]["message"] and slow["timing"]["ended_at"]
    assert slow["log"]["bytes"] == len("line 0\nline 1\nline 2\n")  # the log so far is now evidence too
    again = manifest.verify([root])
    assert again.ok and again.problems == []


def test_verify_of_a_read_only_copy_reports_the_killed_run_without_failing(crashed, tmp_path, monkeypatch):
    import errno

    root = copy_of(crashed, tmp_path)

    def read_only(path: Path, m: dict[str, Any]) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(manifest, "write", read_only)
    report = manifest.verify([root])
    assert report.ok and [p.message for p in report.problems] == [
        "status is running: its process is gone; artifacts not final"]


def test_the_next_session_start_marks_the_killed_run_interrupted(crashed, tmp_path):
    root = copy_of(crashed, tmp_path)
    Session.start(root, "crash")
    (slow,) = manifests(root, "slow")
    assert slow["status"] == "interrupted" and "process gone" in slow["error"]["message"]
    assert (root / manifest.RUNNING).read_bytes() == b""  # nothing is open any more
    report = manifest.verify([root])
    assert report.ok and report.problems == [] and report.checked == 2


def _die_mid_task(root: Path, task: str) -> None:
    """A process that opens a run (running manifest written) and dies without finalizing it."""
    code = ("import os, sys\nfrom pyx_magics.runner import Session, TaskRequest, open_run\n"
            f"s = Session.start({str(root)!r}, 'crash')\nopen_run(s, TaskRequest({task!r}, 'print(1)'))\nos._exit(9)\n")
    assert subprocess.run([PYTHON, "-c", code], timeout=60).returncode == 9


def test_a_tampered_running_manifest_is_not_laundered_by_marking(tmp_path):
    _die_mid_task(tmp_path, "victim")
    (path,) = tmp_path.glob("victim.*.manifest.json")
    m = json.loads(path.read_text())
    m["mode"]["reason"] = "edited after the crash"
    path.write_text(json.dumps(m))
    Session.start(tmp_path, "crash")
    assert manifest.read(path)["status"] == "running"  # left as found
    report = manifest.verify([tmp_path])
    assert not report.ok and any("integrity" in p.message for p in report.problems)


def test_session_start_stays_fast_with_5000_manifests_in_the_directory(tmp_path):
    _die_mid_task(tmp_path, "stale")
    (stale,) = tmp_path.glob("stale.*.manifest.json")
    sample = stale.read_bytes()
    open_runs = []
    for i in range(5000):
        name = f"bulk.20260101T000000{i:03d}Z-{i:06x}.manifest.json"
        fd = os.open(tmp_path / name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, sample)
        os.close(fd)
        open_runs.append(f"+{name}\n-{name}\n")
    with open(tmp_path / manifest.RUNNING, "a") as f:  # worst case: never compacted
        f.write("".join(open_runs))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        Session.start(tmp_path, "crash")
        times.append(time.perf_counter() - t)
    assert manifest.read(stale)["status"] == "interrupted"
    assert max(times) < 0.05, times  # the first start also marks the stale run and compacts the list
    assert (tmp_path / manifest.RUNNING).stat().st_size == 0


# ---------------------------------------------------------------- 3. load

LOAD_WORKER = """
import io, sys
from pyx_magics.execute import in_process
from pyx_magics.runner import Session, TaskRequest, run_task
root, runs = sys.argv[1], int(sys.argv[2])
session = Session.start(root, "load")
source = "print('hello', pyx.run_id)\\npyx.save('result', {'run': pyx.run_id})"
for _ in range(runs):
    _, m = run_task(session, TaskRequest("same_task", source), in_process(source, {}, live_out=io.StringIO()))
    assert m["status"] == "succeeded", m["error"]
"""


def test_four_processes_times_250_runs_of_one_task_give_1000_manifests_that_verify(tmp_path):
    root = tmp_path / "inv"
    procs = [subprocess.Popen([PYTHON, "-c", LOAD_WORKER, str(root), "250"]) for _ in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    paths = sorted(root.glob("same_task.*.manifest.json"))
    assert len(paths) == 1000
    report = manifest.verify([root])
    assert report.ok and report.problems == [] and report.checked == 1000
    ms = [manifest.read(p) for p in paths]
    assert len({m["run_id"] for m in ms}) == 1000
    assert all(len(m["files"]["outputs"]) == 1 for m in ms)  # each run saw its own output only
    lines = (root / ".history.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert len(history) == 1000 and {h["run_id"] for h in history} == {m["run_id"] for m in ms}
    assert not [n for n in listing(root) if n.endswith(".tmp")]
    Session.start(root, "load")
    assert (root / manifest.RUNNING).read_bytes() == b""


BIG_STDOUT = """
import resource, sys, time
from IPython.core.interactiveshell import InteractiveShell
root, mb = sys.argv[1], int(sys.argv[2])
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "pyx_magics")
ip.run_line_magic("pyx_topic", f"big --dir {root}")
n = (mb << 20) // 100
t = time.perf_counter()
r = ip.run_cell(f"%%pyx_run loud\\nfor i in range({n}):\\n    print('%099d' % i)\\n")
took = time.perf_counter() - t
sys.stderr.write(f"RESULT ok={r.success} seconds={took:.2f} maxrss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n")
"""


def test_20_mb_of_stdout_gives_a_complete_log_a_truncated_cell_output_and_bounded_memory(tmp_path):
    root = tmp_path / "inv"
    r = subprocess.run([PYTHON, "-c", BIG_STDOUT, str(root), "20"], capture_output=True, text=True, timeout=300)
    result = dict(kv.split("=") for kv in r.stderr.split("RESULT ", 1)[1].split())
    assert result["ok"] == "True", r.stderr[-2000:]
    (m,) = manifests(root, "loud")
    lines = (20 << 20) // 100
    log = root / m["log"]["path"]
    assert m["log"]["bytes"] == log.stat().st_size == lines * 100
    with open(log, "rb") as f:
        assert f.readline() == b"%099d\n" % 0
        f.seek(-100, os.SEEK_END)
        assert f.read() == b"%099d\n" % (lines - 1)
    assert m["log"]["truncated"] is True
    assert len(r.stdout) < 1_100_000 and f"output truncated here; the full log is inv/{log.name}" in r.stdout
    assert int(result["maxrss_kb"]) < 300 * 1024
    assert manifest.verify([root]).ok


def test_bursts_on_stdout_and_stderr_keep_their_order_in_the_log(shell, tmp_path):
    body = "import sys\nfor i in range(5000):\n    print('out', i)\n    print('err', i, file=sys.stderr)\n"
    assert run_cell(shell, "order", body).success
    (m,) = manifests(tmp_path / "temp", "order")
    expected = "".join(f"out {i}\nerr {i}\n" for i in range(5000))
    assert (tmp_path / "temp" / m["log"]["path"]).read_text() == expected


def test_the_log_follows_a_burst_within_a_fraction_of_a_second(shell, tmp_path):
    body = ("import time\nfor i in range(3000):\n    print(i)\ntime.sleep(0.3)\n"
            "seen = open(pyx.dir / f'lag.{pyx.run_id}.log.txt').read()\n")
    assert run_cell(shell, "lag", body).success
    assert shell.user_ns["seen"] == "".join(f"{i}\n" for i in range(3000))


def test_a_task_that_forks_while_the_log_batch_is_busy_does_not_deadlock_its_child(shell, tmp_path):
    body = textwrap.dedent("""\
        import os, sys, threading, time
        batch, held = sys.stdout._batch, threading.Event()

        def hold():
            with batch.lock:
                held.set()
                time.sleep(0.5)

        threading.Thread(target=hold).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            print('from the child', flush=True)
            os._exit(0)
        for _ in range(200):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise SystemExit('the child deadlocked')
    """)
    r = run_cell(shell, "forks", body)
    assert r.success, r.error_in_exec
    (m,) = manifests(tmp_path / "temp", "forks")
    assert "from the child\n" in (tmp_path / "temp" / m["log"]["path"]).read_text()


def test_secrets_printed_in_a_burst_are_redacted_in_the_log(shell, tmp_path, monkeypatch):
    secret = "s3cr3t-hardening-value"
    monkeypatch.setenv("PYX_HARDENING_PASSWORD", secret)
    body = textwrap.dedent(f"""\
        import sys
        for i in range(20000):
            if i % 997 == 0:
                sys.stdout.write('token {secret[:7]}')
                sys.stdout.write('{secret[7:]} end\\n')
            else:
                print('line', i)
    """)
    assert run_cell(shell, "leaky_burst", body).success
    (m,) = manifests(tmp_path / "temp", "leaky_burst")
    log = (tmp_path / "temp" / m["log"]["path"]).read_text()
    hits = len(range(0, 20000, 997))
    assert secret not in log and secret[:7] + "\n" not in log
    assert log.count("token [REDACTED] end\n") == hits and log.count("\n") == 20000
    assert sum(m["redaction"]["counts"].values()) == hits


# ---------------------------------------------------------------- 4. hostile input: names and paths


@pytest.mark.parametrize("body, message", [
    ("pyx.out('../x')", "invalid output name '../x'"),
    ("pyx.out('sub/../../x')", "invalid output name"),
    ("pyx.save('/etc/pyx_hardening_x', {'a': 1})", "invalid output name '/etc/pyx_hardening_x'"),
    ("pyx.save('../x', 'text')", "invalid output name '../x'"),
    ("pyx.save('a\\x00b', 'text')", "invalid output name"),
    ("pyx.diff('../x', {'a': 1}, {'a': 2})", "invalid diff label '../x'"),
])
def test_output_names_that_leave_the_directory_fail_the_task_and_write_nothing(shell, tmp_path, body, message):
    r = run_cell(shell, "escape", body)
    assert type(r.error_in_exec).__name__ == "TaskFailed"
    m = failed_with(tmp_path / "temp", "escape", "UsageProblem")
    assert message in m["error"]["message"]
    assert [n for n in listing(tmp_path) if not n.startswith("temp")] == []  # nothing next to the directory
    assert not Path("/etc/pyx_hardening_x").exists() and not (tmp_path.parent / "x").exists()
    assert_nothing_half_written(tmp_path / "temp")


@pytest.mark.parametrize("line", ["pyx_topic ../x", "pyx_topic /tmp/x", "pyx_topic ok --env ../x",
                                  "pyx_topic ok --env a/b"])
def test_topics_and_labels_that_are_paths_are_usage_errors_that_write_nothing(shell, tmp_path, line):
    r = shell.run_cell(f"%{line}")
    assert "invalid" in usage_error(r)
    assert listing(tmp_path) == [] and not Path("/tmp/x/.session.x.json").exists()


@pytest.mark.parametrize("task", ["../x", "a/b", "..", ".hidden"])
def test_task_names_that_are_paths_are_usage_errors_that_write_nothing(shell, tmp_path, task):
    assert "invalid task name" in usage_error(run_cell(shell, task, "print('must not run')"))
    assert listing(tmp_path) == []


@pytest.mark.parametrize("option", [["--task", "../x"], ["--topic", "../x"], ["--env", "../x"]])
def test_pyx_run_with_a_path_as_task_topic_or_label_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                                            option):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.py").write_text("print('must not run')\n")
    code, text = pyx_cli("run", "--file", "s.py", "--dir", "inv", *option, capsys=capsys)
    assert code == 2 and "invalid" in text and "must not run" not in text
    assert listing(tmp_path) == ["s.py"]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the investigation, linked into it as ``temp/link`` (and a file as ``temp/f.csv``)."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "f.csv").write_text("a\n1\n")
    root = tmp_path / "temp"
    root.mkdir()
    (root / "link").symlink_to(out, target_is_directory=True)
    (root / "f.csv").symlink_to(out / "f.csv")
    return out


@pytest.mark.parametrize("body", ["pyx.out('link/x.txt')", "pyx.save('link/y', {'a': 1})",
                                  "pyx.save('link/sub/z.txt', 'text')"])
def test_outputs_through_a_symlink_out_of_the_directory_are_refused(shell, tmp_path, outside, body):
    run_cell(shell, "through_link", body)
    m = failed_with(tmp_path / "temp", "through_link", "UsageProblem")
    assert "resolves outside the investigation directory" in m["error"]["message"]
    assert listing(outside) == ["f.csv"]
    assert_nothing_half_written(tmp_path / "temp")


def test_the_dir_diff_scan_and_the_audit_do_not_follow_a_symlink_out_of_the_directory(shell, tmp_path, outside):
    body = textwrap.dedent("""\
        import subprocess, sys
        open(pyx.dir / 'link' / 'by_open.txt', 'w').write('x')
        open(pyx.dir / 'f.csv', 'a').write('2\\n')
        subprocess.run([sys.executable, '-c', "open('temp/link/by_child.txt', 'w').write('y')"], check=True)
        open(pyx.dir / 'inside.txt', 'w').write('z')
    """)
    assert run_cell(shell, "scan", body).success
    (m,) = manifests(tmp_path / "temp", "scan")
    assert [o["path"] for o in m["files"]["outputs"]] == ["inside.txt"]
    assert listing(outside) == ["by_child.txt", "by_open.txt", "f.csv"]
    assert_nothing_half_written(tmp_path / "temp")


def test_a_symlinked_session_state_file_is_refused_not_written_through(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("keep me")
    root = tmp_path / "inv"
    root.mkdir()
    (root / ".session.t.json").symlink_to(victim)
    with pytest.raises(UsageProblem, match="symbolic link"):
        Session.start(root, "t", resume=False)
    assert victim.read_text() == "keep me"


def test_verify_reports_an_artifact_replaced_by_a_symlink_out_of_the_directory(tmp_path):
    import io

    from pyx_magics.execute import in_process
    from pyx_magics.runner import run_task

    session = Session.start(tmp_path / "inv", "t")
    run, m = run_task(session, TaskRequest("t", "print('same text')"), in_process("print('same text')", {},
                                                                                  live_out=io.StringIO()))
    log = run.dir / m["log"]["path"]
    (tmp_path / "outside.txt").write_bytes(log.read_bytes())  # identical content, outside
    log.unlink()
    log.symlink_to(tmp_path / "outside.txt")
    report = manifest.verify([run.manifest_path])
    assert [p.message for p in report.problems] == [f"log {log.name}: path leaves the investigation directory"]


# ---------------------------------------------------------------- 4. hostile input: input files


def test_an_input_file_that_is_not_utf8_is_a_usage_error_and_exit_2(shell, tmp_path, capsys):
    (tmp_path / "bad.json").write_bytes(b'{"notes": "caf\xe9"}')
    (tmp_path / "s.py").write_text("print('must not run')\n")
    message = usage_error(run_cell(shell, "t --input bad.json", "1"))
    assert "bad.json" in message and ("UTF-8" in message or "UnicodeDecodeError" in message)
    code, text = pyx_cli("run", "--file", "s.py", "--input-path", "bad.json", capsys=capsys)
    assert code == 2 and "input 'bad.json' is not valid UTF-8 (byte 14)" in text
    (tmp_path / "bad.py").write_bytes(b"print('\xff')\n")
    code, text = pyx_cli("run", "--file", "bad.py", capsys=capsys)
    assert code == 2 and "script 'bad.py' is not valid UTF-8" in text
    assert not (tmp_path / "temp").exists()


def test_a_50_mb_input_is_refused_at_once_with_a_size_message(shell, tmp_path, capsys):
    """Inputs hold parameters and are copied into the input file and the manifest: 1 MiB at most."""
    big = json.dumps({"rows": ["x" * 1000] * 50_000})
    (tmp_path / "big.json").write_text(big)
    (tmp_path / "s.py").write_text("print('must not run')\n")
    t = time.perf_counter()
    message = usage_error(run_cell(shell, "t --input big.json", "print('must not run')"))
    code, text = pyx_cli("run", "--file", "s.py", "--input-path", "big.json", capsys=capsys)
    took = time.perf_counter() - t
    assert "big.json: 50.2 MB, more than the 1 MiB an input may hold" in message
    assert "put data in a file the task reads" in message
    assert code == 2 and "50.2 MB, more than the 1 MiB" in text
    assert took < 10, took
    assert not (tmp_path / "temp").exists()
    TaskRequest("just_under", "1", {"notes": "x" * (MAX_INPUT_BYTES - 20)})  # the limit is the documented one


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_input_is_refused(shell, tmp_path, capsys, depth):
    (tmp_path / "deep.json").write_text('{"a": ' + "[" * depth + "]" * depth + "}")
    (tmp_path / "s.py").write_text("print('must not run')\n")
    assert "nested" in usage_error(run_cell(shell, "t --input deep.json", "1"))
    code, text = pyx_cli("run", "--file", "s.py", "--input-path", "deep.json", capsys=capsys)
    assert code == 2 and "nested" in text
    assert not (tmp_path / "temp").exists()


@pytest.mark.parametrize("line, text", [
    ("--param x=NaN", '{"x": NaN}'),
    ("--param x=Infinity", '{"x": [1, -Infinity]}'),
])
def test_nan_and_infinity_in_inputs_are_refused(shell, tmp_path, capsys, line, text):
    (tmp_path / "in.json").write_text(text)
    (tmp_path / "s.py").write_text("print('must not run')\n")
    assert "NaN and Infinity are not JSON numbers" in usage_error(run_cell(shell, f"t {line}", "1"))
    code, out = pyx_cli("run", "--file", "s.py", "--input-path", "in.json", capsys=capsys)
    assert code == 2 and "NaN and Infinity" in out
    assert not (tmp_path / "temp").exists()
    with pytest.raises(InputError):
        TaskRequest("t", "1", {"x": float("nan")})


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../../etc/passwd", "/etc/localtime", ""])
def test_unknown_time_zones_are_refused(shell, tmp_path, capsys, zone):
    tw = {"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00", "timezone": zone}
    (tmp_path / "in.json").write_text(json.dumps({"time_window": tw}))
    (tmp_path / "s.py").write_text("print('must not run')\n")
    assert "unknown time zone" in usage_error(run_cell(shell, "t --input in.json", "1"))
    code, out = pyx_cli("run", "--file", "s.py", "--input-path", "in.json", capsys=capsys)
    assert code == 2 and "time_window.timezone: unknown time zone" in out
    assert not (tmp_path / "temp").exists()


def test_naive_datetimes_need_a_time_zone_and_are_accepted_with_one(shell, tmp_path):
    naive = {"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00"}
    (tmp_path / "naive.json").write_text(json.dumps({"time_window": naive}))
    message = usage_error(run_cell(shell, "t --input naive.json", "1"))
    assert "time_window.start: '2026-01-01T00:00:00' has no UTC offset and time_window.timezone is not set" in message
    assert not (tmp_path / "temp").exists()
    (tmp_path / "zoned.json").write_text(json.dumps({"time_window": {**naive, "timezone": "Europe/Paris"}}))
    assert run_cell(shell, "zoned --input zoned.json", "tw = pyx.input['time_window']").success
    (m,) = manifests(tmp_path / "temp", "zoned")
    assert m["input"]["params"]["time_window"]["timezone"] == "Europe/Paris"


# ---------------------------------------------------------------- 4. hostile input: outputs


@pytest.mark.parametrize("body, message", [
    ("pyx.save('x', {'a': object()})", "cannot save as JSON: object is not JSON serialisable"),
    ("pyx.save('x', {'a': 1, 'b': [set(), lambda: 1]})", "cannot save as JSON: function is not JSON serialisable"),
    ("deep = []\nfor _ in range(100_000):\n    deep = [deep]\npyx.save('x', deep)", "nested too deeply to save"),
    ("pyx.save('x', 'lone \\ud800 surrogate')", "not valid Unicode"),
    ("pyx.save('x', 42)", "pyx.save cannot write a int"),
])
def test_outputs_that_cannot_be_serialised_fail_clearly_and_nothing_is_half_written(shell, tmp_path, body, message):
    run_cell(shell, "unsaveable", body)
    m = failed_with(tmp_path / "temp", "unsaveable", "UsageProblem")
    assert message in m["error"]["message"]
    assert not [n for n in listing(tmp_path / "temp") if n.startswith("x.")]
    assert_nothing_half_written(tmp_path / "temp")


def test_nan_and_infinity_are_saved_as_valid_json_and_csv(shell, tmp_path):
    body = textwrap.dedent("""\
        import math
        import pandas as pd
        pyx.save('floats', {'nan': math.nan, 'inf': math.inf, 'minus': [-math.inf, 1.5]})
        pyx.save('frame', pd.DataFrame({'x': [math.nan, math.inf, -math.inf, 2.0]}))
    """)
    assert run_cell(shell, "floats", body).success
    (m,) = manifests(tmp_path / "temp", "floats")
    outs = {o["path"].split(".")[0]: tmp_path / "temp" / o["path"] for o in m["files"]["outputs"]}

    def strict(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(outs["floats"].read_text(), parse_constant=strict) == {
        "nan": None, "inf": "Infinity", "minus": ["-Infinity", 1.5]}
    assert outs["frame"].read_text().splitlines() == ["x", '""', "inf", "-inf", "2.0"]
    import pandas as pd

    back = pd.read_csv(outs["frame"])["x"].tolist()
    assert back[1:] == [float("inf"), float("-inf"), 2.0] and back[0] != back[0]  # NaN reads back as NaN
    assert_nothing_half_written(tmp_path / "temp")


# ---------------------------------------------------------------- 4. hostile input: SQL


def test_an_sql_syntax_error_fails_the_task_clearly_and_the_next_task_works(shell, tmp_path, service_env):
    r = run_cell(shell, "typo", "df = pyx.db().query_df('select id frm generate_series(1, 3) as id')")
    assert type(r.error_in_exec).__name__ == "TaskFailed"
    (m,) = manifests(tmp_path / "temp", "typo")
    assert m["status"] == "failed" and 'syntax error at or near "generate_series"' in m["error"]["message"]
    assert m["data_access"][-1]["statement"].startswith("select id frm")  # the failed query is evidence too
    assert run_cell(shell, "fixed", "df = pyx.db().query_df('select 1 as x')").success
    assert shell.user_ns["df"]["x"].tolist() == [1]
    assert_nothing_half_written(tmp_path / "temp")


def test_a_misspelt_first_keyword_is_refused_before_it_reaches_the_server(shell, tmp_path, service_env):
    run_cell(shell, "selec", "df = pyx.db().query_df('selec 1')")
    m = failed_with(tmp_path / "temp", "selec", "UnsafeOperation")
    assert "SELEC is not a SQL command pyx knows" in m["error"]["message"]
    assert not [a for a in m["data_access"] if "selec 1" in a["statement"]]  # never sent
    assert run_cell(shell, "select", "df = pyx.db().query_df('select 1 as x')").success


def test_a_huge_result_without_a_limit_is_bounded_by_max_rows_not_memory(tmp_path, service_env):
    (tmp_path / "huge.py").write_text(textwrap.dedent("""\
        import resource
        try:
            pyx.db().query_df('select generate_series(1, 5000000) as n')
        finally:
            print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """))
    r = subprocess.run([PYTHON, "-m", "pyx_magics.cli", "run", "--file", "huge.py", "--dir", "inv"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env={**os.environ, **service_env})
    assert r.returncode == 1, r.stderr
    (m,) = manifests(tmp_path / "inv", "huge")
    assert m["status"] == "failed"
    assert "the query returned more than 100,000 rows, too many for a DataFrame" in m["error"]["message"]
    log = (tmp_path / "inv" / m["log"]["path"]).read_text()
    assert int(log.split("maxrss_kb ")[1].split()[0]) < 300 * 1024
    assert_nothing_half_written(tmp_path / "inv")
