"""Secret canaries end to end: env, URLs, papermill parameters; printed, raised, returned, displayed, saved.

None may appear — raw, base64- or URL-encoded — in the investigation directory, the executed notebook
or any export.
"""

from __future__ import annotations

import base64
import secrets
import urllib.parse

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from pyx_magics.cli import main as pyx

pytestmark = pytest.mark.slow

CELLS = [
    "%pyx_topic canary --env local",
    "%%pyx_run printed\nimport os\nprint('env', os.environ['DB_PASSWORD'], 'url', os.environ['DATABASE_URL'])\n"
    "print('param', api_token)",
    "%%pyx_run framed\nimport os, pandas as pd\nfrom IPython.display import display\n"
    "df = pd.DataFrame({'who': ['svc'], 'token': [api_token], 'pw': [os.environ['DB_PASSWORD']]})\n"
    "display(df)\npyx.save('frame', df)\ndf",
    "%%pyx_run returned\napi_token",
    "leak = api_token  # a plain cell, journaled by the pyx kernel",
    "%pyx_export all",
    "%%pyx_run raised\nraise RuntimeError('login failed for ' + api_token)",
]


def encodings(value: str) -> set[str]:
    raw = value.encode()
    return {value, urllib.parse.quote(value), urllib.parse.quote_plus(value), base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode().rstrip("=")}


def test_no_canary_reaches_disk_through_any_path(tmp_path, monkeypatch, pyx_kernel_env):
    pw, url_pw, token = ("pw-" + secrets.token_urlsafe(12), "up-" + secrets.token_urlsafe(12),
                         "tk-" + secrets.token_urlsafe(16))
    for key, value in pyx_kernel_env.items():
        monkeypatch.setenv(key, value)
    for key in ("PYX_DIR", "PYX_TOPIC", "PYX_SESSION_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DB_PASSWORD", pw)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{url_pw}@127.0.0.1:9/db")
    monkeypatch.chdir(tmp_path)
    params = new_code_cell('api_token = "placeholder"', metadata={"tags": ["parameters"]})
    nb = new_notebook(cells=[params] + [new_code_cell(c) for c in CELLS],
                      metadata={"kernelspec": {"name": "pyx", "display_name": "Python 3 (pyx)", "language": "python"}})
    nbformat.write(nb, tmp_path / "incident.ipynb")

    code = pyx(["rerun", "incident.ipynb", "-p", "api_token", token, "--output", "executed.ipynb"])
    assert code == 1, "the last task raises, so the re-run is not reproduced"
    executed = tmp_path / "executed.ipynb"
    assert executed.exists(), "papermill left the partial notebook"
    assert pyx(["export", "executed.ipynb", "--to", "all"]) in (0, 1)

    outputs = nbformat.read(executed, as_version=4)
    shown = str([c.get("outputs") for c in outputs.cells])
    assert "[REDACTED]" in shown, "the secret-bearing outputs are there, masked"
    assert "raised" in shown and "RuntimeError" in shown
    needles = encodings(pw) | encodings(url_pw) | encodings(token)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and ".jupyter" not in p.parts]
    assert any(p.name.endswith(".inspect.md") for p in files) and any(p.name.endswith(".summary.md") for p in files)
    leaks = sorted({(str(p.relative_to(tmp_path)), n) for p in files if p.name != "incident.ipynb"
                    for n in needles if n.encode() in p.read_bytes()})
    assert not leaks
