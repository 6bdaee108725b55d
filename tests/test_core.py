"""Core (no IPython): ids, hashing, names, inputs, manifests, history."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pyx_magics.core import history, manifest
from pyx_magics.core.errors import EvidenceError, InputError, UsageProblem
from pyx_magics.core.hashing import atomic_write, canonical_json, sha256_file
from pyx_magics.core.inputs import parse_input_text, validate_input
from pyx_magics.core.keys import logic_key, output_digest
from pyx_magics.core.names import check_name, check_output_name, inside
from pyx_magics.core.runid import RUN_ID_RE, new_run_id, run_id_time, strip_run_ids


def test_importing_core_loads_no_ipython_and_no_driver():
    code = ("import sys, pyx_magics.core, pyx_magics.core.manifest, pyx_magics.core.redact, "
            "pyx_magics.core.inputs, pyx_magics.core.keys, pyx_magics.core.history;"
            "bad=[m for m in sys.modules if m.split('.')[0] in "
            "('IPython','ipykernel','psycopg','redis','aiokafka','pandas','papermill')];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_run_ids_are_utc_ms_sortable_unique_and_filename_safe():
    ids = [new_run_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert ids == sorted(ids), "ids from one process must be strictly increasing"
    assert all(RUN_ID_RE.fullmatch(i) for i in ids)
    assert all(c.isalnum() or c in "-" for c in ids[0])
    assert abs((run_id_time(ids[0]) - datetime.now(UTC)).total_seconds()) < 5


def _ids(n: int) -> list[str]:
    return [new_run_id() for _ in range(n)]


def test_run_ids_are_unique_across_processes_started_together():
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        a, b = pool.map(_ids, [500, 500])
    assert not set(a) & set(b)


def test_strip_run_ids_removes_every_id():
    rid = new_run_id()
    assert strip_run_ids(f"db_rows.orders.{rid}.csv") == "db_rows.orders.<run_id>.csv"


def test_sha256_file_streams_and_matches_hashlib(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert sha256_file(p) == (hashlib.sha256(data).hexdigest(), len(data))


@pytest.mark.parametrize("obj", [
    {}, {"b": 1, "a": {"d": [1, {"x": None}], "c": "é\n\u2028"}}, {"n": float("nan"), "i": {"v": float("-inf")}},
    {1: "int key", "s": {2: "x"}}, {"e": {}, "l": []}, [1, 2], "text",
])
def test_layout_json_is_pretty_json_s_content_laid_out_by_levels(obj):
    from pyx_magics.core.hashing import layout_json, pretty_json

    out = layout_json(obj)
    assert json.loads(out) == json.loads(pretty_json(obj)) and out.endswith(b"\n")
    assert layout_json(obj) == out  # deterministic
    if isinstance(obj, dict) and "a" in obj:
        assert out.decode().split("\n")[:-1] == [
            "{", '  "a": {', '    "c": "é\\n\u2028",', '    "d": [1, {"x": null}]', "  },", '  "b": 1', "}"]


def test_layout_json_refuses_what_json_cannot_hold():
    from pyx_magics.core.hashing import layout_json

    with pytest.raises(TypeError):
        layout_json({"o": object()})


def test_canonical_json_is_order_independent_and_nan_safe():
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1})
    assert canonical_json({"x": float("nan"), "y": float("inf")}) == b'{"x":"NaN","y":"Infinity"}'


@pytest.mark.parametrize("step", ["write", "rename", "rename-without-exchange"])
def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch, step):
    from pyx_magics.core import hashing

    target = tmp_path / "m.json"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    if step == "write":
        monkeypatch.setattr(os, "write", boom)
    else:
        monkeypatch.setattr(hashing, "_exchange", boom if step == "rename" else lambda tmp, target: False)
        monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_atomic_write_replaces_files_and_links_but_never_a_folder(tmp_path):
    from pyx_magics.core import hashing

    target = tmp_path / "m.json"
    atomic_write(target, b"first", mode=0o600)
    atomic_write(target, b"second")  # over an existing file: an exchange where the kernel has renameat2
    assert target.read_bytes() == b"second" and (target.stat().st_mode & 0o777) == 0o644
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"keep")
    link = tmp_path / "link.json"
    link.symlink_to(elsewhere)
    atomic_write(link, b"new")  # like os.replace: the link itself is replaced, its target untouched
    assert not link.is_symlink() and link.read_bytes() == b"new" and elsewhere.read_bytes() == b"keep"
    folder = tmp_path / "folder.json"
    folder.mkdir()
    (folder / "inside").write_bytes(b"x")
    with pytest.raises(OSError):
        atomic_write(folder, b"new")
    assert (folder / "inside").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "folder.json", "link.json", "m.json"]
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    atomic_write(fifo, b"file now")  # a special file is replaced, never written into
    assert fifo.is_file() and fifo.read_bytes() == b"file now"
    fifo.unlink()
    atomic_write(tmp_path / "new.json", b"n", exists=False)  # the caller knows the name is new
    atomic_write(tmp_path / "new2.json", b"m")  # or does not say: the exchange finds nothing and a rename is made
    assert (tmp_path / "new.json").read_bytes() == b"n" and (tmp_path / "new2.json").read_bytes() == b"m"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    if sys.platform == "linux":
        assert hashing._renameat2 not in (None, hashing._UNSET), "renameat2 should be found on Linux"
        current = os.umask(0)
        os.umask(current)
        assert current == hashing._UMASK  # read from /proc/self/status, never set


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a\x00b", "", ".hidden", "a/b", "x" * 101, "a..b"])
def test_bad_names_are_refused(bad):
    with pytest.raises(UsageProblem):
        check_name(bad, "task name")


def test_output_names_may_have_subfolders_but_not_escape(tmp_path):
    assert check_output_name("charts/lag.png") == "charts/lag.png"
    for bad in ("../x.csv", "/abs.csv", "a/../../b", "a\\b", "nul\x00.txt"):
        with pytest.raises(UsageProblem):
            check_output_name(bad)


def test_inside_refuses_a_symlink_pointing_outside(tmp_path):
    root = tmp_path / "temp"
    root.mkdir()
    (root / "evil").symlink_to(tmp_path)
    with pytest.raises(UsageProblem):
        inside(root, "evil/x.csv")
    assert inside(root, "ok.csv") == (root / "ok.csv").resolve()


def test_input_json_syntax_error_names_line_and_column():
    with pytest.raises(InputError, match=r"line 2, column 8"):
        parse_input_text('{"a": 1,\n  "b": }')


@pytest.mark.parametrize(
    "data, match",
    [
        ({"time_window": {"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}}, "before start"),
        ({"time_window": {"start": "2026-01-01T00:00", "end": "2026-01-02T00:00", "timezone": "Mars/Base"}},
         "unknown time zone"),
        ({"time_window": {"start": "2026-01-01T00:00", "end": "2026-01-02T00:00"}}, "no UTC offset"),
        ({"time_window": {"start": "yesterday", "end": "2026-01-02T00:00Z"}}, "not an ISO 8601"),
        ({"entity_ids": [1, {"x": 1}]}, r"entity_ids\[1\]"),
        ({"entity_ids": "1042"}, "entity_ids"),
        ({"notes": 5}, "notes"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_inputs_name_the_key_and_problem(data, match):
    with pytest.raises(InputError, match=match):
        validate_input(data)


def test_valid_input_passes_unchanged():
    data = {"time_window": {"start": "2026-01-01T00:00", "end": "2026-01-01T01:00", "timezone": "Europe/Paris"},
            "entity_ids": [1042, "ord-7"], "notes": "n", "order_id": 1042}
    assert validate_input(data) is data


def test_deeply_nested_input_is_refused():
    text = "[" * 100000 + "]" * 100000
    with pytest.raises(InputError):
        parse_input_text('{"a": ' + text + "}")


def test_logic_key_ignores_notes_and_output_digest_ignores_run_ids():
    a = logic_key("t", "c" * 64, {"x": 1, "notes": "first"})
    assert a == logic_key("t", "c" * 64, {"x": 1, "notes": "second"})
    assert a != logic_key("t", "c" * 64, {"x": 2})
    r1, r2 = new_run_id(), new_run_id()
    assert output_digest([{"path": f"o.{r1}.csv", "sha256": "1"}]) == output_digest(
        [{"path": f"o.{r2}.csv", "sha256": "1"}])
    assert output_digest([{"path": "o.csv", "sha256": "1"}]) != output_digest([{"path": "o.csv", "sha256": "2"}])


def test_shipped_schema_is_valid_json_schema():
    import jsonschema

    jsonschema.Draft7Validator.check_schema(manifest.json_schema())


def test_reader_fails_cleanly_on_garbage(tmp_path):
    for i, raw in enumerate([b"", b"\xff\xfe", b"[1]", b'{"schema": "pyx.manifest/1"}', b"{" * 5000]):
        p = tmp_path / f"{i}.manifest.json"
        p.write_bytes(raw)
        with pytest.raises(EvidenceError):
            manifest.read(p)


def _append_many(args):
    path, worker, n = args
    for i in range(n):
        history.append_line(Path(path), {"worker": worker, "i": i, "pad": "x" * (i * 37 % 5000)})


def test_history_appends_stay_valid_under_concurrent_writers(tmp_path):
    path = tmp_path / ".history.jsonl"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(str(path), w, 200) for w in range(4)])
    lines = path.read_bytes().splitlines()
    assert len(lines) == 800
    parsed = [json.loads(line) for line in lines]
    assert {(p["worker"], p["i"]) for p in parsed} == {(w, i) for w in range(4) for i in range(200)}


def test_directory_scan_sees_every_change_even_within_one_timestamp_tick(tmp_path):
    from pyx_magics.capture import scan_dir

    rid = new_run_id()
    (tmp_path / "a.csv").write_text("1")
    first = scan_dir(tmp_path, rid)
    (tmp_path / "b.csv").write_text("2")  # right after the listing: same coarse mtime tick, likely
    (tmp_path / f"out.{rid}.json").write_text("{}")
    (tmp_path / f"other.{new_run_id()}.json").write_text("{}")  # another run's evidence
    (tmp_path / "t.input.json").write_text("{}")
    (tmp_path / "t.py").write_text("x = 1")  # a task's code file
    (tmp_path / "a.csv").write_text("changed")
    second = scan_dir(tmp_path, rid)
    assert set(first) == {"a.csv"}
    assert set(second) == {"a.csv", "b.csv", f"out.{rid}.json"}
    assert second["a.csv"] != first["a.csv"]
    (tmp_path / "b.csv").unlink()
    assert set(scan_dir(tmp_path, rid)) == {"a.csv", f"out.{rid}.json"}


def test_installed_versions_match_importlib_metadata():
    from importlib import metadata

    from pyx_magics.runner import PACKAGES, installed_versions

    names = (*PACKAGES, "pyx-magics", "jupyter_client", "no-such-distribution-here")
    found = installed_versions(names)
    expected = {}
    for name in names:
        try:
            expected[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    assert found == expected and "no-such-distribution-here" not in found and "pandas" in found
