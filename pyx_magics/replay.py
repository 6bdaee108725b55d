"""``pyx run --replay MANIFEST``: run one recorded task again from its recorded code and input.

The replay goes through the one orchestration path (``run_task``) with the subprocess
executor, in the manifest's investigation directory, under a new session of the same topic,
then compares its outputs with the recorded ones (the same verdict as ``pyx compare``).

Why a child process rather than in-process: the recorded code is arbitrary (it may chdir,
patch modules, leak connections or block in C), a child is killed cleanly on ``--timeout``, and
the CLI process stays free of the task's side effects. The script is the ``<task>.py`` that
``run_task`` itself writes from the recorded source, so no copy lives outside the directory
(and the script is not mistaken for an input file).

A replay is always read-only: a task recorded with ``--allow-write`` is not allowed to write again.
Like ``pyx run``, it runs in the current working directory (relative paths in the code resolve there).
A task that read notebook variables cannot be replayed alone: re-run its notebook (``pyx rerun``).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from pyx_magics.core import compare, manifest
from pyx_magics.core.errors import EvidenceError, UsageProblem
from pyx_magics.core.hashing import atomic_write, pretty_json
from pyx_magics.core.names import inside


def open_in(root: Path) -> compare.Opener:
    """An opener for artifacts of manifests stored in ``root``."""

    def opener(m: Any, rel: str) -> IO[bytes]:
        return open(inside(root, rel), "rb")

    return opener


def replay(manifest_path: Path, timeout: float | None = None) -> int:
    """Re-run the task of ``manifest_path`` and print its verdict; 0 when reproduced, 1 otherwise."""
    from pyx_magics.display import TaskSummary
    from pyx_magics.execute import as_child
    from pyx_magics.runner import Session, TaskRequest, run_task

    if not manifest_path.is_file():
        raise UsageProblem(f"--replay {manifest_path}: manifest not found")
    original = manifest.read(manifest_path)
    if original["status"] == "running":
        raise EvidenceError(f"{manifest_path.name} is still running (or was interrupted): nothing final to compare")
    root = manifest_path.resolve().parent
    if original.get("mode", {}).get("access") == "write":
        print(f"pyx: note: {original['task']} was recorded with --allow-write; the replay is read-only",
              file=sys.stderr)
    request = TaskRequest(original["task"], original["code"]["source"], original["input"]["params"], timeout)
    ours: set[str] = set()
    with session_state_kept(root, [original["topic"]], ours):
        session = Session.start(root, original["topic"], original["environment_label"], resume=False)
        ours.add(session.session_id)
        executor = as_child(root / f"{request.task}.py", [], timeout=timeout)
        run, final = run_task(session, request, executor)
    print(repr(TaskSummary(final)), file=sys.stderr)
    result = compare.compare_sessions([original], [final], open_in(root))
    write_result(root, result, f"replay of {manifest_path.name}")
    task = result["tasks"][0]  # one run on each side, same task name: always one matched pair
    print(f"{task['verdict']}: {original['task']} {original['run_id']} -> {run.run_id}")
    for reason in task["reasons"]:
        print(f"  {reason}")
    if final["status"] == "failed" and (final.get("error") or {}).get("type") == "NameError" \
            and original["namespace"]["reads"]:
        names = ", ".join(r["name"] for r in original["namespace"]["reads"][:8])
        print(f"  hint: the task read notebook variables ({names}) a replay cannot restore; "
              "use `pyx rerun NOTEBOOK` instead", file=sys.stderr)
    return compare.exit_code(result)


@contextlib.contextmanager
def session_state_kept(root: Path, topics: Iterable[str], ours: set[str]) -> Iterator[None]:
    """Put each topic's session state (``.session.<topic>.json``) back afterwards when it names one
    of ``ours`` (filled by the caller), so a replay or a re-run does not become the session the
    next kernel resumes; a state a live kernel wrote meanwhile is left alone."""
    saved = {}
    for topic in set(topics):
        state = root / f".session.{topic}.json"
        saved[state] = state.read_bytes() if state.exists() else None
    try:
        yield
    finally:
        for state, data in saved.items():
            if _session_of(state) not in ours:
                continue
            with suppress(OSError):
                if data is None:
                    state.unlink()
                else:
                    atomic_write(state, data)


def _session_of(state: Path) -> str | None:
    try:
        value = json.loads(state.read_text("utf-8")).get("session_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def write_result(root: Path, result: dict[str, Any], title: str) -> tuple[Path, Path]:
    """Write ``<topic>.<B session>.compare.json`` and ``.compare.md`` into ``root``."""
    from pyx_magics.core.names import check_name
    from pyx_magics.core.redact import Redactor

    b = result["b"]
    topic = b.get("topic") if isinstance(b.get("topic"), str) else None
    topic = topic or (result["a"].get("topic") if isinstance(result["a"].get("topic"), str) else None)
    topic = check_name(topic or "investigation", "topic")
    session = b.get("session_id") or result["a"].get("session_id") or "none"
    red = Redactor.from_env()
    safe = redact_strings(red, result)
    base = root / f"{topic}.{session}.compare"
    json_path, md_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".md")
    atomic_write(json_path, pretty_json(safe))
    atomic_write(md_path, red.text(compare.render_markdown(safe, title)).encode("utf-8"))
    return json_path, md_path


def redact_strings(red: Any, obj: Any) -> Any:
    """Mask secret values in every string of ``obj`` (keys such as ``logic_key`` are not secrets here)."""
    if isinstance(obj, str):
        return red.text(obj)
    if isinstance(obj, dict):
        return {k: redact_strings(red, v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_strings(red, v) for v in obj]
    return obj
