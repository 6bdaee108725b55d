"""IPython's history write moved from the start of a cell to its end while pyx is loaded."""

from __future__ import annotations

import sqlite3
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from pyx_magics import ipython_history


@pytest.fixture
def shell_with_history(tmp_path, monkeypatch):
    def make(cache_size: int = 0) -> InteractiveShell:
        cfg = Config()
        cfg.HistoryManager.hist_file = str(tmp_path / "history.sqlite")
        cfg.HistoryManager.db_cache_size = cache_size
        InteractiveShell.clear_instance()
        return InteractiveShell.instance(config=cfg)

    monkeypatch.chdir(tmp_path)
    yield make
    InteractiveShell.clear_instance()


def _stored(path, source: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(path) as db:
            if db.execute("SELECT count(*) FROM history WHERE source_raw = ?", (source,)).fetchone()[0]:
                return True
        time.sleep(0.05)
    return False


def test_each_cell_still_reaches_the_history_database_once_it_ends(shell_with_history, tmp_path):
    ip = shell_with_history()
    ip.run_line_magic("load_ext", "pyx_magics")
    assert ip.history_manager.db_cache_size == ipython_history.NEVER  # IPython's own trigger is off
    ip.run_cell("answer = 40 + 2", store_history=True)
    assert _stored(tmp_path / "history.sqlite", "answer = 40 + 2")
    ip.run_line_magic("unload_ext", "pyx_magics")
    assert ip.history_manager.db_cache_size == 0
    assert not hasattr(ip, "_pyx_history")
    ip.run_cell("after = 1", store_history=True)  # IPython's own trigger again
    assert _stored(tmp_path / "history.sqlite", "after = 1")


def test_a_history_configured_by_the_user_is_left_alone(shell_with_history):
    ip = shell_with_history(cache_size=5)
    callbacks = list(ip.events.callbacks["post_run_cell"])
    ip.run_line_magic("load_ext", "pyx_magics")
    assert ip.history_manager.db_cache_size == 5
    assert ip.events.callbacks["post_run_cell"] == callbacks
    ip.run_line_magic("unload_ext", "pyx_magics")
    assert ip.history_manager.db_cache_size == 5


def test_the_hook_never_raises_into_the_cell():
    class Broken:
        db_cache_size = 0

        @property
        def save_flag(self):
            raise RuntimeError("history thread gone")

    ipython_history.DeferredHistory(Broken()).post_run_cell(None)  # no exception
