"""The directory scan kept exact by inotify (pyx_magics.dirwatch), and its fallback without it."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from pyx_magics import capture, dirwatch
from pyx_magics.capture import scan_dir
from pyx_magics.core.runid import new_run_id

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")


@pytest.fixture(params=["inotify", "listing"])
def mode(request, monkeypatch):
    if request.param == "inotify" and sys.platform != "linux":
        pytest.skip("inotify is Linux's")
    if request.param == "listing":
        monkeypatch.setattr(dirwatch, "watcher", lambda sink: None)
    return request.param


def test_scan_sees_every_change_in_either_mode(tmp_path, mode):
    rid = new_run_id()
    (tmp_path / "a.csv").write_text("1")
    (tmp_path / "sub").mkdir()
    first = scan_dir(tmp_path, rid)
    (tmp_path / "b.csv").write_text("2")
    (tmp_path / "sub" / "c.csv").write_text("3")
    (tmp_path / "sub" / "deeper").mkdir()
    (tmp_path / "sub" / "deeper" / "d.csv").write_text("4")
    (tmp_path / f"out.{rid}.json").write_text("{}")
    (tmp_path / f"other.{new_run_id()}.json").write_text("{}")
    (tmp_path / "t.input.json").write_text("{}")
    (tmp_path / "t.py").write_text("x = 1")
    os.replace(tmp_path / "a.csv", tmp_path / "renamed.csv")
    second = scan_dir(tmp_path, rid)
    assert set(first) == {"a.csv"}
    assert set(second) == {"renamed.csv", "b.csv", "sub/c.csv", "sub/deeper/d.csv", f"out.{rid}.json"}
    (tmp_path / "b.csv").unlink()
    shutil.rmtree(tmp_path / "sub" / "deeper")
    assert set(scan_dir(tmp_path, rid)) == {"renamed.csv", "sub/c.csv", f"out.{rid}.json"}


@linux_only
def test_a_watched_folder_is_listed_once_then_kept_by_its_events(tmp_path, monkeypatch):
    calls = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: calls.append(p) or real(p))
    scan_dir(tmp_path)
    for i in range(20):
        (tmp_path / f"f{i}.csv").write_text(str(i))
        assert f"f{i}.csv" in scan_dir(tmp_path)
    assert calls == [str(tmp_path)]


@linux_only
def test_a_folder_deleted_and_made_again_is_listed_again(tmp_path):
    root = tmp_path / "inv"
    root.mkdir()
    (root / "a.csv").write_text("1")
    assert set(scan_dir(root)) == {"a.csv"}
    shutil.rmtree(root)
    root.mkdir()
    (root / "b.csv").write_text("2")
    assert set(scan_dir(root)) == {"b.csv"}
    os.rename(root, tmp_path / "moved")
    root.mkdir()
    assert scan_dir(root) == {}


@linux_only
def test_lost_events_make_every_watched_folder_be_listed_again(tmp_path):
    scan_dir(tmp_path)
    (tmp_path / "a.csv").write_text("1")
    watch = dirwatch.watcher(capture._on_event)
    assert watch is not None and watch.watching(str(tmp_path))
    with capture._listings_lock:
        watch.drain()
        watch._event(-1, dirwatch.IN_Q_OVERFLOW, b"")  # what the kernel sends when its queue overflowed
        listing = capture._listings[str(tmp_path)]
        assert not listing.watched
        listing.names.clear()  # what was known is not trusted any more: a new listing must restore it
        listing.plain.clear()
    assert set(scan_dir(tmp_path)) == {"a.csv"}


@linux_only
def test_a_forked_child_scans_on_its_own_and_leaves_the_parents_events(tmp_path):
    scan_dir(tmp_path)
    (tmp_path / "before-fork.csv").write_text("1")
    pid = os.fork()
    if pid == 0:  # child: its own scan must be right and must not consume the parent's queue
        code = 0 if set(scan_dir(tmp_path)) == {"before-fork.csv"} else 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    (tmp_path / "after.csv").write_text("2")
    assert set(scan_dir(tmp_path)) == {"before-fork.csv", "after.csv"}


def test_without_inotify_nothing_is_watched(monkeypatch):
    monkeypatch.setattr(dirwatch, "_instance", None)
    monkeypatch.setattr(dirwatch, "_unavailable", False)
    monkeypatch.setattr(dirwatch, "_open", lambda sink: None)
    assert dirwatch.watcher(capture._on_event) is None
    assert dirwatch.watcher(capture._on_event) is None
