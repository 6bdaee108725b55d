"""Browser test: JupyterLab serves the demo notebook, headless Chromium runs a ``%%pyx_run`` cell in it.

Needs Debian's ``chromium`` (``scripts/install_browser.sh`` installs it when run as root) and the
``playwright`` package (its own browsers are never downloaded: Playwright drives ``/usr/bin/chromium``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "notebooks" / "demo_incident.ipynb"
# the docs' copy is refreshed only on request, so a test run leaves the work tree clean
DOCS_SHOT = ROOT / "docs" / "img" / "browser_pyx_run.png"
CHROMIUM = Path("/usr/bin/chromium")
# Background networking off: the closed network refuses Chromium's own connections otherwise.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions"]
WAIT_MS = 60_000  # every browser wait is bounded by this
CELL = "%%pyx_run browser_check\nprint('hello from the browser')\npyx.save('browser', {'ok': True})"


def _skip_reason() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing: run scripts/install_browser.sh as root (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright cannot be imported ({exc}): pip install -e '.[test]'"
    return None


SKIP_REASON = _skip_reason()
# Decided at collection, so a skipped run does not start the local servers either.
pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(180),
              pytest.mark.skipif(SKIP_REASON is not None, reason=f"browser test: {SKIP_REASON}")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_status(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"jupyter lab did not answer {url.split('?')[0]} in {timeout:.0f} s:\n"
                         f"{log.read_text()[-3000:]}")


@pytest.fixture
def lab(tmp_path: Path, service_env: dict[str, str], pyx_kernel_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A JupyterLab server on 127.0.0.1 serving a folder that holds the demo notebook; stopped afterwards."""
    assert DEMO.is_file(), f"{DEMO} is missing: build it with python -m pyx_magics.demo.notebooks"
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copyfile(DEMO, root / DEMO.name)
    home = tmp_path / "jupyter-home"
    settings = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "receive Jupyter news?" toast, no update check (both would go to the network).
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}), "utf-8")
    env = {**os.environ, **pyx_kernel_env,
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "PYTHONUNBUFFERED": "1"}
    env.pop("PYX_DIR", None)  # the kernel records under <notebook folder>/temp
    env.pop("PYX_TOPIC", None)
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyter-lab.log"
    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.open_browser=False", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.allow_root=True"]  # CI runs as root
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_status(f"{base}/api/status?token={token}", proc, log)
        yield {"base": base, "token": token, "root": root, "log": log}
    finally:
        # Stop the process group this fixture started (server and its kernels), nothing else.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def test_pyx_run_cell_in_jupyterlab_renders_a_succeeded_summary(lab: dict[str, Any], tmp_path: Path) -> None:
    """A %%pyx_run cell added to the demo notebook and run in the browser shows a succeeded pyx summary."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                                    timeout=WAIT_MS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{lab['base']}/lab/tree/{DEMO.name}?token={lab['token']}&reset")
            notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
            heading = notebook.locator(".jp-MarkdownCell").first
            expect(heading).to_contain_text("Incident investigation")
            # The notebook opens on the pyx kernel; wait for it to be idle before adding the cell.
            expect(page.locator(".jp-NotebookPanel-toolbar .jp-KernelName")).to_contain_text("pyx")
            expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_visible()

            heading.click()
            page.keyboard.press("Escape")  # command mode
            page.keyboard.press("b")  # insert a code cell below the heading, selected
            cell = notebook.locator(".jp-Cell").nth(1)
            expect(cell).to_have_class(re.compile(r"\bjp-CodeCell\b.*\bjp-mod-selected\b"))
            page.keyboard.press("Enter")  # edit mode
            page.keyboard.insert_text(CELL)
            expect(cell.locator(".cm-content")).to_contain_text("pyx.save('browser', {'ok': True})")
            page.keyboard.press("Shift+Enter")

            summary = cell.locator(".jp-OutputArea-output .pyx-summary")
            expect(summary).to_have_attribute("data-status", "succeeded")
            expect(summary).to_contain_text("browser_check")
            expect(summary).to_contain_text("succeeded")
            expect(cell.locator(".jp-OutputArea")).to_contain_text("hello from the browser")
            run_id = summary.locator("code").first.inner_text()

            SCREENSHOT = DOCS_SHOT if os.environ.get("PYX_UPDATE_SCREENSHOTS") else tmp_path / DOCS_SHOT.name
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.mouse.click(5, 5)  # move focus off the cell so no cursor blinks in the shot
            page.screenshot(path=str(SCREENSHOT), type="png")
        finally:
            browser.close()

    manifests = list((lab["root"] / "temp").rglob(f"browser_check.{run_id}.manifest.json"))
    assert len(manifests) == 1, f"no manifest for run {run_id} under {lab['root'] / 'temp'}"
    manifest = json.loads(manifests[0].read_text("utf-8"))
    assert manifest["status"] == "succeeded"
    assert manifest["task"] == "browser_check"
    assert SCREENSHOT.stat().st_size < 300_000
