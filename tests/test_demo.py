"""`pyx demo` end to end from a clean folder: reports with their sections, reproduced, no secret anywhere."""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path

import pytest

from pyx_magics import cli, services
from pyx_magics.core import manifest
from pyx_magics.demo.notebooks import demo_notebook, template_notebook

pytestmark = [pytest.mark.services, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def test_checked_in_notebooks_match_their_builder():
    import nbformat

    for name, nb in (("demo_incident.ipynb", demo_notebook()), ("incident_template.ipynb", template_notebook())):
        on_disk = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        assert on_disk == nb, f"notebooks/{name} is stale: run python -m pyx_magics.demo.notebooks"
        tagged = [c for c in on_disk.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1


def test_demo_runs_end_to_end_reproduces_and_leaks_no_secret(tmp_path, monkeypatch, capsys):
    seen: list[str] = []

    class Recording(services.LocalServices):
        def env(self) -> dict[str, str]:
            env = super().env()
            seen.extend(v for k, v in env.items() if k.endswith("PASSWORD"))
            return env

    monkeypatch.setattr(services, "LocalServices", Recording)
    for var in ("DATABASE_URL", "REDIS_URL", "KAFKA_BROKERS", "PYX_DIR", "PYX_TOPIC"):
        monkeypatch.delenv(var, raising=False)
    demo = tmp_path / "demo"
    assert cli.main(["demo", "--dir", str(demo), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "REPRODUCED" in out and "## For the leader" in out
    evidence = demo / "temp"
    (inspect,) = [p for p in evidence.glob("*.inspect.md") if p.name.split(".")[1] in out.split("Session `")[1]]
    text = inspect.read_text()
    for section in ("Problem statement", "Expected behavior", "Scope", "Hypotheses", "Steps + evidence",
                    "Root cause", "Mitigation / Fix", "Prevention"):
        assert f"## {section}" in text
    for task in ("fingerprint_postgres", "db_rows", "cache_vs_db", "consumer_lag", "events"):
        assert f": {task}" in text
    (compare,) = evidence.glob("*.compare.json")
    verdicts = json.loads(compare.read_text())
    assert verdicts["schema"] == "pyx.compare/1"
    assert manifest.verify([evidence]).ok
    # what the demo proves is in its evidence
    lag = json.loads(next(evidence.glob("kafka_offsets.cache-updater.*.json")).read_text())
    assert {p["partition"]: p["lag"] for p in lag["partitions"]}[1] > 0
    cached = json.loads(next(evidence.glob("redis_value.entity_1042.*.json")).read_text())
    assert cached["value"]["state"] == "PENDING" and cached["version"]["value"] == 1
    # no secret canary, raw or encoded, in any file the demo left
    assert len(seen) >= 2
    needles = {n for s in seen for n in (s, urllib.parse.quote(s), base64.b64encode(s.encode()).decode())}
    leaks = [(p, n) for p in demo.rglob("*") if p.is_file() for n in needles if n.encode() in p.read_bytes()]
    assert not leaks
