"""The pyx kernel: kernelspec install, cell journal hooks, real kernels over the protocol, papermill."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import kernel_ext
from kernel_ext import hooks, kernelspec
from pyx_magics import cli
from pyx_magics.core import manifest
from pyx_magics.journal import read as read_journal
from tests.kernel_client import Kernel

BIN = Path(sys.executable).parent
CELL_KEYS = {"kind", "execution_count", "sha256", "source", "started_at", "ended_at", "duration_ms", "status",
             "error_type", "run_ids"}


# ---------------------------------------------------------------- helpers


def journal(root: Path) -> list[dict[str, Any]]:
    files = sorted(root.glob("*.journal.jsonl"))
    assert len(files) == 1, files
    return read_journal(files[0])


def manifests(root: Path) -> dict[str, dict[str, Any]]:
    """run_id -> final manifest."""
    found = (manifest.read(p) for p in root.glob("*.manifest.json"))
    return {m["run_id"]: m for m in found}


def notebook(path: Path, *sources: str, parameters: str | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def investigation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pyx_kernel_env: dict[str, str]) -> Path:
    """An investigation directory in PYX_DIR, with the pyx kernelspec on JUPYTER_PATH."""
    for key, value in pyx_kernel_env.items():
        monkeypatch.setenv(key, value)
    for key in ("PYX_TOPIC", "PYX_ENV"):
        monkeypatch.delenv(key, raising=False)
    root = tmp_path / "inv"
    monkeypatch.setenv("PYX_DIR", str(root))
    monkeypatch.chdir(tmp_path)
    return root


@pytest.fixture
def shell(investigation: Path) -> Iterator[InteractiveShell]:
    """A real InteractiveShell (history in memory) with kernel_ext loaded."""
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance(config=config)
    kernel_ext.load_ipython_extension(ip)
    yield ip
    kernel_ext.unload_ipython_extension(ip)
    InteractiveShell.clear_instance()


@pytest.fixture
def kernel(investigation: Path) -> Iterator[Kernel]:
    k = Kernel(investigation.parent)
    yield k
    k.close()


# ---------------------------------------------------------------- kernelspec and CLI


def test_the_kernelspec_is_ipykernel_with_the_extension_in_its_argv():
    spec = kernelspec.kernel_dict()
    assert spec["argv"] == [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                            "--ext", "kernel_ext"]
    assert spec["display_name"] == "Python 3 (pyx)"
    assert spec["language"] == "python"


def test_pyx_kernel_install_writes_kernel_json_into_the_prefix(tmp_path, capsys):
    assert cli.main(["kernel", "install", "--prefix", str(tmp_path), "--name", "pyx-test"]) == 0
    installed = tmp_path / "share" / "jupyter" / "kernels" / "pyx-test"
    assert json.loads((installed / "kernel.json").read_text()) == kernelspec.kernel_dict()
    out = capsys.readouterr().out
    assert str(installed) in out
    assert "JUPYTER_PATH=" in out  # the prefix is not on the search path: say how to make it found


def test_jupyter_kernelspec_list_shows_the_installed_pyx_kernel(pyx_kernel_env):
    proc = subprocess.run([str(BIN / "jupyter"), "kernelspec", "list", "--json"], capture_output=True,
                          text=True, env={**os.environ, **pyx_kernel_env}, check=True)
    specs = json.loads(proc.stdout)["kernelspecs"]
    assert specs["pyx"]["spec"]["display_name"] == "Python 3 (pyx)"
    assert specs["pyx"]["spec"]["argv"][-2:] == ["--ext", "kernel_ext"]


def test_a_permission_error_exits_2_with_a_hint_to_use_user(tmp_path, monkeypatch, capsys):
    from jupyter_client.kernelspec import KernelSpecManager

    def denied(self, source_dir, kernel_name=None, user=False, replace=None, prefix=None):
        raise PermissionError(13, "Permission denied", "/usr/local/share/jupyter/kernels/pyx")

    monkeypatch.setattr(KernelSpecManager, "install_kernel_spec", denied)
    assert cli.main(["kernel", "install"]) == 2
    err = capsys.readouterr().err
    assert "permission denied" in err and "--user" in err


def test_an_unwritable_prefix_exits_2_with_a_hint(tmp_path, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the prefix should be")
    assert cli.main(["kernel", "install", "--prefix", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "cannot install the kernelspec" in err and "--user" in err


def test_user_and_prefix_together_are_a_usage_error(tmp_path, capsys):
    assert cli.main(["kernel", "install", "--user", "--prefix", str(tmp_path)]) == 2
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["kernel", "--help"], ["kernel", "install", "--help"]])
def test_kernel_commands_have_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    assert "usage: pyx kernel" in capsys.readouterr().out


# ---------------------------------------------------------------- extension load/unload


def _state(ip: InteractiveShell) -> tuple[dict[str, list[Any]], dict[str, set[str]], Any, Any]:
    callbacks = {k: list(v) for k, v in ip.events.callbacks.items()}
    magics = {k: set(v) for k, v in ip.magics_manager.magics.items()}
    return callbacks, magics, copy.copy(ip.custom_exceptions), ip.history_manager.db_cache_size


def test_loading_twice_is_harmless_and_unloading_removes_exactly_what_loading_added(investigation):
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    try:
        before = _state(ip)
        kernel_ext.load_ipython_extension(ip)
        loaded = _state(ip)
        kernel_ext.load_ipython_extension(ip)
        assert _state(ip) == loaded
        # the journal, and IPython's history write moved to the end of the cell (pyx_magics.ipython_history)
        assert len(loaded[0]["post_run_cell"]) == len(before[0]["post_run_cell"]) + 2
        assert "pyx_run" in loaded[1]["cell"] and "pyx_topic" in loaded[1]["line"]
        kernel_ext.unload_ipython_extension(ip)
        assert _state(ip) == before
        kernel_ext.unload_ipython_extension(ip)  # unloading twice is harmless too
        assert _state(ip) == before
    finally:
        InteractiveShell.clear_instance()


def test_unloading_keeps_magics_that_pyx_magics_loaded_itself(investigation):
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    try:
        ip.run_line_magic("load_ext", "pyx_magics")
        with_magics = _state(ip)
        ip.run_line_magic("load_ext", "kernel_ext")
        ip.run_line_magic("unload_ext", "kernel_ext")
        assert _state(ip) == with_magics
        ip.run_line_magic("unload_ext", "pyx_magics")
    finally:
        InteractiveShell.clear_instance()


# ---------------------------------------------------------------- journal hooks (in-process shell)


def test_every_executed_cell_appends_one_journal_line(shell, investigation):
    shell.run_cell("topic = 'journal-t'", store_history=True)
    shell.run_cell("%%pyx_run first\nx = 1", store_history=True)
    shell.run_cell("x + 1", store_history=True)
    shell.run_cell("%%pyx_run second\ny = 2", store_history=True)
    lines = journal(investigation)
    assert [line["source"] for line in lines] == ["topic = 'journal-t'", "%%pyx_run first\nx = 1", "x + 1",
                                                  "%%pyx_run second\ny = 2"]
    assert all(set(line) == CELL_KEYS and line["kind"] == "cell" and line["status"] == "ok" for line in lines)
    assert [line["execution_count"] for line in lines] == [1, 2, 3, 4]
    runs = manifests(investigation)
    assert [len(line["run_ids"]) for line in lines] == [0, 1, 0, 1]
    assert runs[lines[1]["run_ids"][0]]["task"] == "first"
    assert runs[lines[3]["run_ids"][0]]["task"] == "second"
    assert {m["topic"] for m in runs.values()} == {"journal-t"}
    assert all(line["duration_ms"] >= 0 and line["ended_at"] >= line["started_at"] for line in lines)


def test_a_magic_running_its_body_adds_no_second_line_and_a_nested_run_cell_neither(shell, investigation):
    shell.run_cell("%%pyx_run body\nfor i in range(3):\n    pass", store_history=True)
    shell.run_cell("get_ipython().run_cell('inner = 1')", store_history=True)
    lines = journal(investigation)
    assert len(lines) == 2
    assert lines[1]["source"] == "get_ipython().run_cell('inner = 1')"
    assert shell.user_ns["inner"] == 1


def test_the_journal_records_failures_and_continues(shell, investigation):
    shell.run_cell("%%pyx_run boom\nraise KeyError('k')", store_history=True)
    shell.run_cell("1/0", store_history=True)
    shell.run_cell("ok = True", store_history=True)
    lines = journal(investigation)
    assert [(line["status"], line["error_type"]) for line in lines] == [
        ("error", "TaskFailed"), ("error", "ZeroDivisionError"), ("ok", None)]
    assert manifests(investigation)[lines[0]["run_ids"][0]]["status"] == "failed"


def test_a_syntax_error_is_an_error_before_exec(shell, investigation):
    shell.run_cell("%pyx_note problem orders stuck", store_history=True)
    shell.run_cell("def (", store_history=True)
    cells = [line for line in journal(investigation) if line["kind"] == "cell"]
    assert cells[-1]["status"] == "error" and cells[-1]["error_type"] == "SyntaxError"


def test_journaled_source_is_redacted_and_hashed_after_redaction(shell, investigation, monkeypatch):
    import hashlib

    secret = "hunter2-very-secret"
    monkeypatch.setenv("PYX_TEST_PASSWORD", secret)
    shell.run_cell(f"%%pyx_run creds\npw = {secret!r}", store_history=True)
    text = next(investigation.glob("*.journal.jsonl")).read_text()
    assert secret not in text
    line = json.loads(text.splitlines()[-1])
    assert line["sha256"] == hashlib.sha256(line["source"].encode()).hexdigest()


def test_a_failing_hook_is_logged_and_never_reaches_the_cell(shell, investigation, monkeypatch, caplog):
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(hooks, "append", broken)
    with caplog.at_level(logging.ERROR, logger="kernel_ext.hooks"):
        result = shell.run_cell("%%pyx_run fine\nv = 5", store_history=True)
    assert result.success and shell.user_ns["v"] == 5
    assert "post_run_cell failed" in caplog.text


def test_the_banner_names_topic_session_and_environment_once(shell, investigation, capsys, monkeypatch):
    monkeypatch.setenv("PYX_ENV", "staging")
    shell.run_cell("topic = 'bannered'", store_history=True)
    assert "pyx kernel" not in capsys.readouterr().out  # no session yet: nothing to announce
    shell.run_cell("%%pyx_run a\npass", store_history=True)
    shell.run_cell("%%pyx_run b\npass", store_history=True)
    out = capsys.readouterr().out
    session = shell._pyx_magics.session
    assert out.count("pyx kernel ·") == 1
    assert f"topic bannered · session {session.session_id} · environment STAGING" in out
    assert {m["environment_label"] for m in manifests(investigation).values()} == {"staging"}


def test_cells_go_to_the_journal_of_the_session_current_when_they_end(shell, investigation):
    shell.run_cell("%pyx_topic first-topic", store_history=True)
    shell.run_cell("a = 1", store_history=True)
    shell.run_cell("%pyx_topic second-topic", store_history=True)
    shell.run_cell("b = 2", store_history=True)
    first = read_journal(next(investigation.glob("first-topic.*.journal.jsonl")))
    second = read_journal(next(investigation.glob("second-topic.*.journal.jsonl")))
    assert [line["source"] for line in first] == ["%pyx_topic first-topic", "a = 1"]
    assert [line["source"] for line in second] == ["%pyx_topic second-topic", "b = 2"]


def test_cells_before_a_session_are_kept_up_to_a_limit_and_the_loss_is_logged(shell, investigation, caplog):
    from collections import deque

    shell._pyx_kernel_hooks.pending = deque(maxlen=2)
    for i in range(3):
        shell.run_cell(f"c{i} = {i}", store_history=True)
    with caplog.at_level(logging.WARNING, logger="kernel_ext.hooks"):
        shell.run_cell("%%pyx_run now\npass", store_history=True)
    assert [line["source"] for line in journal(investigation)] == ["c1 = 1", "c2 = 2", "%%pyx_run now\npass"]
    assert "1 cell(s) run before the session started were not kept" in caplog.text


# ---------------------------------------------------------------- real kernel over the protocol


def test_the_pyx_kernel_runs_pyx_run_without_load_ext_and_journals_every_cell(kernel, investigation):
    reply, out = kernel.run("topic = 'proto'")
    assert reply["status"] == "ok"
    reply, out = kernel.run("%%pyx_run count\nn = 41 + 1\nprint(n)")
    assert reply["status"] == "ok", out
    assert "42" in out and "pyx kernel · topic proto" in out and "environment LOCAL" in out
    reply, out = kernel.run("raise RuntimeError('cell fails')")
    assert reply["status"] == "error" and "RuntimeError: cell fails" in out
    reply, out = kernel.run("%%pyx_run broken\nraise ValueError('task fails')")
    assert reply["status"] == "error" and "TaskFailed" in out
    reply, _ = kernel.run("n")
    assert reply["status"] == "ok"  # the kernel goes on after failures

    lines = journal(investigation)
    assert [(line["execution_count"], line["status"], line["error_type"]) for line in lines] == [
        (1, "ok", None), (2, "ok", None), (3, "error", "RuntimeError"), (4, "error", "TaskFailed"), (5, "ok", None)]
    runs = manifests(investigation)
    assert {runs[lines[1]["run_ids"][0]]["status"], runs[lines[3]["run_ids"][0]]["status"]} == {"succeeded", "failed"}
    assert all(m["topic"] == "proto" and m["environment_label"] == "local" for m in runs.values())


def test_the_summary_reaches_the_front_end_after_the_tasks_own_output(kernel, investigation):
    kernel.run("%pyx_topic shown")
    reply, quiet = kernel.messages("%%pyx_run quiet\nx = 1")
    assert reply["status"] == "ok"
    ((kind, content),) = quiet
    assert kind == "display_data"
    assert content["data"]["text/plain"].startswith("pyx quiet: succeeded in ")
    assert 'class="pyx-summary" data-status="succeeded"' in content["data"]["text/html"]
    reply, noisy = kernel.messages("%%pyx_run noisy\nimport sys\nprint('hello')\nprint('warn', file=sys.stderr)\n41 + 1")
    assert reply["status"] == "ok"
    shown = [(kind, c.get("text") or c["data"]["text/plain"]) for kind, c in noisy]
    texts = [text.strip() for _, text in shown[:-1]]  # stdout and stderr may come in either order
    assert sorted(texts[:2]) == ["hello", "warn"] and texts[2:] == ["42"]
    assert shown[-1][0] == "display_data" and shown[-1][1].startswith("pyx noisy: succeeded")


# ---------------------------------------------------------------- papermill on the pyx kernel


def test_papermill_runs_pyx_cells_with_the_topic_parameter(investigation, tmp_path):
    import papermill

    src = notebook(tmp_path / "in.ipynb", "%%pyx_run first\nrows = [1, 2]", "%%pyx_run second\nlen(rows)",
                   parameters="topic = 'default-topic'")
    papermill.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_name="pyx",
                               parameters={"topic": "pm-topic"}, request_save_on_cell_execute=False,
                               progress_bar=False, cwd=str(tmp_path))
    runs = manifests(investigation)
    assert sorted(m["task"] for m in runs.values()) == ["first", "second"]
    assert {(m["topic"], m["status"]) for m in runs.values()} == {("pm-topic", "succeeded")}
    lines = journal(investigation)
    assert len(lines) == 4  # parameters, injected parameters, two tasks
    assert "pm-topic" in lines[1]["source"]
    assert [len(line["run_ids"]) for line in lines] == [0, 0, 1, 1]
    assert next(investigation.glob("*.journal.jsonl")).name.startswith("pm-topic.")


def test_papermill_cli_stops_at_a_failing_task_keeping_the_notebook_journal_and_manifest(investigation, tmp_path):
    src = notebook(tmp_path / "in.ipynb", "%%pyx_run ok\nx = 1", "%%pyx_run fails\nraise LookupError('no row')",
                   "never = True", parameters="topic = 'cli-fail'")
    out = tmp_path / "out.ipynb"
    proc = subprocess.run([str(BIN / "papermill"), str(src), str(out), "-k", "pyx", "--cwd", str(tmp_path)],
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert out.exists()
    assert "LookupError" in out.read_text()
    lines = journal(investigation)
    assert [line["status"] for line in lines] == ["ok", "ok", "error"]
    assert "never = True" not in {line["source"] for line in lines}
    runs = manifests(investigation)
    assert sorted((m["task"], m["status"]) for m in runs.values()) == [("fails", "failed"), ("ok", "succeeded")]
    failed = next(m for m in runs.values() if m["task"] == "fails")
    assert failed["error"]["type"] == "LookupError"
    assert failed["run_id"] in lines[2]["run_ids"]
