"""Reports: the inspect log, the summary, learn packages, the template notebook and the nbconvert exporters.

Fixture investigations (tests/fixtures_report.py) run real tasks through the runner and write real
journal notes; the notebooks are built the way Jupyter or papermill would have saved them.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import nbformat
import pytest

from pyx_magics.cli import main as pyx_main
from pyx_magics.core.hashing import sha256_file
from pyx_magics.report import export_notebook
from pyx_magics.report.exporters import InspectExporter, SummaryExporter
from pyx_magics.report.learn import check_leaks, key_pattern, sql_tables
from pyx_magics.report.model import load_notebook, section_of
from tests.fixtures_report import TASKS, Built, build

VENV_BIN = Path(sys.executable).parent
LINK_RE = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)\)")
SECTIONS = ("Problem statement", "Expected behavior", "Scope", "Hypotheses", "Steps + evidence", "Root cause",
            "Mitigation / Fix", "Prevention")


@pytest.fixture
def half(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Built:
    """A papermill run that stopped at a failing task: the cells after it have no outputs."""
    return build(tmp_path, monkeypatch, mode="papermill", failing=True)


@pytest.fixture
def interactive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Built:
    """A notebook run by hand: no papermill metadata, no injected parameters."""
    return build(tmp_path, monkeypatch, mode="interactive", failing=True)


def by_suffix(paths: list[Path], suffix: str) -> Path:
    return next(p for p in paths if p.name.endswith(suffix))


def secret_forms(value: str) -> list[bytes]:
    raw = value.encode()
    forms = {raw, quote(value).encode(), quote_plus(value).encode(), binascii.hexlify(raw)}
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        forms.add(enc(raw))
        forms.add(enc(raw).rstrip(b"="))
    return sorted(forms)


def assert_no_secret(paths: list[Path], canaries: dict[str, str]) -> None:
    files = [q for p in paths for q in ([p] if p.is_file() else [x for x in p.rglob("*") if x.is_file()])]
    assert files
    for f in files:
        data = f.read_bytes()
        for name, value in canaries.items():
            for form in secret_forms(value):
                assert form not in data, f"{name} secret ({form[:6]!r}...) leaked into {f}"


def anchors_of(md_file: Path) -> set[str]:
    text = md_file.read_text("utf-8")
    ids = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        ids.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return ids


def assert_links_resolve(md_file: Path) -> int:
    """Every relative link in ``md_file`` reaches an existing file (and anchor, for markdown targets)."""
    count = 0
    for target in LINK_RE.findall(md_file.read_text("utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path_part, _, frag = target.partition("#")
        dest = (md_file.parent / unquote(path_part)).resolve() if path_part else md_file
        assert dest.exists(), f"{md_file.name}: link {target} does not resolve"
        if frag and dest.suffix == ".md":
            assert frag in anchors_of(dest), f"{md_file.name}: anchor #{frag} missing in {dest.name}"
        count += 1
    return count


# ---------------------------------------------------------------- inspect log


def test_inspect_log_has_every_section_and_each_step_with_its_evidence(half: Built) -> None:
    """The inspect log has the eight sections, one step per task with status, systems, previews and errors."""
    written = export_notebook(half.nb_path, "inspect")
    md_file = by_suffix(written, ".inspect.md")
    assert md_file.name == f"{half.session.topic}.{half.session.session_id}.inspect.md"
    assert md_file.parent == half.root
    text = md_file.read_text("utf-8")
    for title in SECTIONS:
        assert f"\n## {title}\n" in text
    assert text.index("## Problem statement") < text.index("## Steps + evidence") < text.index("## Prevention")
    for i, task in enumerate(["fingerprint_env", "check_db", "check_cache", "check_kafka", "replay_check",
                              "verify_fix"], 1):
        assert f'<a id="step-{i}-{task}"></a>' in text
        assert f"### Step {i}: {task}" in text
    assert "| postgres | main | `127.0.0.1:55432` | database=acme_prod" in text  # systems with identity
    assert "| status | paid | pending | changed |" in text  # the diff as a table
    assert "| 1042 | paid | 2026-01-05T10:00:00Z |" in text  # the CSV rows
    assert "| 1 | 90 | 130 | 40 |" in text  # the offsets table
    assert "**Error**: `RuntimeError`: consumer offset reset failed for partition 1" in text
    assert "### Step 6: verify_fix" in text and "papermill stopped before this cell" in text
    assert "\x1b" not in text and "all three systems answered" in text  # clean text output
    assert "| `api_token` | [REDACTED] | injected |" in text  # parameters stand in for the injected cell
    assert "\n# Parameters\n" not in text and "api_token = " not in text
    assert "- The database has order 1042 as paid since 10:00 UTC _(In [6] · [step 2](#step-2-check_db))_" in text


def test_inspect_embeds_partition_charts_next_to_their_tables(half: Built) -> None:
    """A kafka_offsets output and a partition/count CSV each get a PNG chart written beside the report."""
    written = export_notebook(half.nb_path, "inspect")
    pngs = [p for p in written if p.suffix == ".png"]
    run_id = half.manifests["check_kafka"]["run_id"]
    assert {p.name for p in pngs} == {f"lag.{run_id}.png", f"count.kafka_counts.order_events.{run_id}.png"}
    for p in pngs:
        assert p.parent.name == f"{half.session.topic}.{half.session.session_id}.inspect.assets"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = by_suffix(written, ".inspect.md").read_text("utf-8")
    table_end = text.index("| 2 | 50 | 52 | 2 |")
    chart = text.index(f"assets/lag.{run_id}.png")
    assert table_end < chart < text.index("kafka_counts.order_events", table_end)


def test_every_relative_link_of_every_export_resolves(half: Built) -> None:
    """Links in the inspect log, the summary and both learn packages reach existing files and anchors."""
    written = export_notebook(half.nb_path, "all", prefixes=["acme_"])
    checked = {p.name: assert_links_resolve(p) for p in written if p.suffix == ".md"}
    assert checked[f"{half.session.topic}.{half.session.session_id}.inspect.md"] > 20
    assert checked[f"{half.session.topic}.{half.session.session_id}.summary.md"] > 5


def test_short_hashes_shown_match_the_linked_files(half: Built) -> None:
    """Each evidence row's 12-hex hash is the start of the linked file's sha256."""
    md_file = by_suffix(export_notebook(half.nb_path, "inspect"), ".inspect.md")
    rows = re.findall(r"^\| \[[^\]]+\]\(([^)]+)\) \| [a-z_]+ \|[^|]*\|[^|]*\| `([0-9a-f]{12})`", md_file.read_text("utf-8"),
                      re.M)
    assert len(rows) >= 15
    for target, short in rows:
        digest, _ = sha256_file(md_file.parent / unquote(target))
        assert digest.startswith(short), target


def test_a_changed_artifact_is_flagged_in_the_log(half: Built) -> None:
    """An output edited after its run is shown with both hashes, not silently re-hashed."""
    out = half.manifests["check_db"]["files"]["outputs"][0]
    (half.root / out["path"]).write_text("id,status\n1042,edited\n")
    text = by_suffix(export_notebook(half.nb_path, "inspect"), ".inspect.md").read_text("utf-8")
    assert f"`{out['sha256'][:12]}` ⚠ changed since recorded" in text


def test_empty_sections_say_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook with one task and no notes still has every section, each naming the note to add."""
    from pyx_magics.display import TaskSummary
    from pyx_magics.execute import in_process
    from pyx_magics.runner import Session, TaskRequest, run_task

    s = Session.start(tmp_path / "temp", "bare", "local", resume=False)
    _, m = run_task(s, TaskRequest("only", "print('hi')\n"), in_process("print('hi')\n", {}))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "%%pyx_run only\nprint('hi')\n", execution_count=1,
        outputs=[nbformat.v4.new_output("display_data", data={"text/plain": repr(TaskSummary(m))})])])
    nb_path = tmp_path / "bare.ipynb"
    nbformat.write(nb, str(nb_path))
    written = export_notebook(nb_path, "all")
    text = by_suffix(written, ".inspect.md").read_text("utf-8")
    for title in SECTIONS:
        assert f"## {title}" in text
    assert "_No root cause recorded yet: add `%pyx_note root_cause ...`._" in text
    assert "_No problem statement recorded yet" in text and "_No prevention recorded yet" in text
    summary = by_suffix(written, ".summary.md").read_text("utf-8")
    assert "_Not identified yet: add `%pyx_note root_cause ...`._" in summary


# ---------------------------------------------------------------- summary


def test_summary_has_both_audiences_and_links_each_claim_to_its_step(half: Built) -> None:
    """Teammate and leader parts; root cause, actions and findings link to the inspect step and manifest."""
    written = export_notebook(half.nb_path, "all", prefixes=["acme_"])
    text = by_suffix(written, ".summary.md").read_text("utf-8")
    base = f"{half.session.topic}.{half.session.session_id}"
    teammate, leader = text.split("## For the leader")
    for label in ("**What happened.**", "**Workaround.**", "**ETA.**", "**Data correction plan.**"):
        assert label in teammate
    for label in ("**Status:**", "**Impact:**", "**Root cause:**", "**Detection gap:**", "**Prevention actions:**"):
        assert label in leader
    assert len(leader.strip().split("\n")) <= 25
    kafka = half.manifests["check_kafka"]
    root_line = next(line for line in leader.split("\n") if "**Root cause:**" in line)
    assert f"[step 4]({base}.inspect.md#step-4-check_kafka)" in root_line
    assert f"[manifest](check_kafka.{kafka['run_id']}.manifest.json)" in root_line
    assert "| Correct the cached status of the affected orders (backfill from acme_orders) | alice | 2026-02-01 |" in leader
    assert "Correct the cached status" in teammate.split("**Data correction plan.**")[1]
    assert "2026-02-01" in teammate.split("**ETA.**")[1].split("\n")[0]
    assert "nothing detected this" in next(line for line in leader.split("\n") if "Detection gap" in line)


# ---------------------------------------------------------------- secrets


def test_no_secret_reaches_any_export(half: Built) -> None:
    """Env secrets (printed by a task, shown live, typed in markdown) and injected parameters appear in no file."""
    written = export_notebook(half.nb_path, "all", prefixes=["acme_"])
    assert half.canaries["env"] in half.nb_path.read_text()  # planted in the source notebook
    assert half.canaries["token"] in half.nb_path.read_text()
    assert_no_secret(written, half.canaries)
    assert_no_secret([half.root / f"{half.session.topic}.{half.session.session_id}.learn"], half.canaries)


# ---------------------------------------------------------------- learn


def test_learn_writes_project_and_deprojected_global_packages(half: Built) -> None:
    """Project: SKILL.md with front matter, queries, catalog, facts, mapping; global: placeholders and no mapping."""
    written = export_notebook(half.nb_path, "learn", prefixes=["acme_"])
    root = half.root / f"{half.session.topic}.{half.session.session_id}.learn"
    project, glob_ = root / "project", root / "global"
    for pkg in (project, glob_):
        head = (pkg / "SKILL.md").read_text("utf-8").split("\n")
        assert head[0] == "---" and head[1].startswith("name: ") and head[2].startswith("description: ")
        assert re.fullmatch(r"name: [a-z0-9-]{1,64}", head[1])
    refs = project / "references"
    assert "select id, status, updated_at from acme_orders where id = 1042" in (refs / "queries.md").read_text()
    catalog = (refs / "catalog.md").read_text()
    for ident in ("acme_orders", "acme.order-events", "acme:order:*", "acme-order-service"):
        assert f"`{ident}`" in catalog
    facts = (refs / "facts.md").read_text()
    kafka_manifest = half.root / f"check_kafka.{half.manifests['check_kafka']['run_id']}.manifest.json"
    assert f"`{sha256_file(kafka_manifest)[0][:12]}`" in facts
    mapping = json.loads((refs / "placeholders.json").read_text())
    assert mapping["placeholders"]["<TABLE_1>"] == "acme_orders"
    assert mapping["placeholders"]["<TOPIC_1>"] == "acme.order-events"
    assert mapping["placeholders"]["<KEY_PATTERN_1>"] == "acme:order:*"
    assert not list(glob_.rglob("placeholders.json"))
    gtext = "\n".join(p.read_text() for p in glob_.rglob("*.md"))
    assert "fingerprint → database → cache → event stream" in gtext
    assert "select id, status, updated_at from <TABLE_1> where id = {entity_id}" in gtext
    assert "GET <KEY_PATTERN_1>" in gtext and "topic=<TOPIC_1> group=<SERVICE_1>" in gtext
    assert "acme" not in gtext.lower()
    assert by_suffix(written, ".template.ipynb").exists()


def test_leakage_check_catches_project_identifiers_and_passes_once_deprojected(half: Built, capsys: Any) -> None:
    """A global package holding acme_ names fails the check (exit 1, hits listed); the de-projected one passes."""
    export_notebook(half.nb_path, "learn", prefixes=["acme_"])
    root = half.root / f"{half.session.topic}.{half.session.session_id}.learn"
    assert check_leaks(root) == []
    assert pyx_main(["learn", "--check", str(root)]) == 0
    leaky = root / "global" / "references" / "leaky.md"
    leaky.write_text("select * from acme_orders\nconsume acme.order-events\nSCAN 0 MATCH acme:order:*\n")
    hits = {leak.identifier for leak in check_leaks(root)}
    assert {"acme_orders", "acme.order-events", "acme:order:*"} <= hits
    capsys.readouterr()
    assert pyx_main(["learn", "--check", str(root / "global")]) == 1
    err = capsys.readouterr().err
    assert "leaky.md:1" in err and "acme_orders" in err and "leaky.md:3" in err
    leaky.unlink()
    (root / "global" / "notes.md").write_text("the Acme team owns it\n")  # the bare prefix, any case
    assert [leak.identifier for leak in check_leaks(root)] == ["Acme"]


def test_project_identifiers_are_detected_from_statements() -> None:
    """Tables come from SQL (not CTEs, functions or catalogs); keys collapse to patterns."""
    assert sql_tables("with recent as (select * from acme_orders) select extract(epoch from ts) from recent "
                      "join public.acme_items i on true, unnest(array[1]) from pg_stat_activity") == [
        "acme_orders", "acme_items"]
    assert key_pattern("acme:order:1042") == "acme:order:*"
    assert key_pattern("acme:user:9f86d081884c7d65:cart") == "acme:user:*:cart"
    assert section_of("Mitigation / Fix") == "fix" and section_of("Root cause (confirmed)") == "root_cause"
    assert section_of("Problem statement") == "problem" and section_of("Appendix") is None


# ---------------------------------------------------------------- template notebook


def test_template_notebook_is_parameterized_and_cleared(half: Built) -> None:
    """One parameters cell with the contract names, the original task cells with their code, no outputs."""
    tpl = by_suffix(export_notebook(half.nb_path, "learn"), ".template.ipynb")
    nb = nbformat.read(str(tpl), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    src = tagged[0].source
    for name in ("topic", "environment_label", "time_window_start", "time_window_end", "timezone", "entity_ids",
                 "notes"):
        assert re.search(rf"^{name} = ", src, re.M)
    assert "entity_ids = [1042]" in src and "time_window_start = '2026-01-05T09:00:00+00:00'" in src
    runs = [c.source for c in nb.cells if c.cell_type == "code" and c.source.startswith("%%pyx_run")]
    assert [r.split()[1] for r in runs] == ["fingerprint_env", "check_db", "check_cache", "check_kafka",
                                            "replay_check", "verify_fix"]
    assert runs[1].split("\n", 1)[1] == TASKS["check_db"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert "injected-parameters" not in tpl.read_text()


def test_template_notebook_runs_in_ipython_and_asks_the_same_questions(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Run cell by cell in a real shell with pyx loaded: every task succeeds with the original logic_key."""
    from IPython.core.interactiveshell import InteractiveShell

    b = build(tmp_path, monkeypatch, mode="interactive", failing=False)
    tpl = by_suffix(export_notebook(b.nb_path, "learn"), ".template.ipynb")
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "pyx_magics")
        for cell in nbformat.read(str(tpl), as_version=4).cells:
            if cell.cell_type == "code":
                assert shell.run_cell(cell.source).success, cell.source[:80]
    finally:
        shell.run_line_magic("unload_ext", "pyx_magics")
        InteractiveShell.clear_instance()
    lines = [json.loads(x) for x in (b.root / ".history.jsonl").read_text().splitlines()]
    reruns = {h["task"]: h for h in lines if h["run_id"] not in {m["run_id"] for m in b.manifests.values()}}
    assert set(reruns) == set(b.manifests)
    for task, h in reruns.items():
        assert h["status"] == "succeeded"
        m = json.loads((b.root / h["manifest"]).read_text())
        assert m["compare"]["logic_key"] == b.manifests[task]["compare"]["logic_key"], task


def test_template_notebook_runs_through_papermill_on_the_pyx_kernel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pyx_kernel_env: dict[str, str]) -> None:
    """``papermill`` with kernel ``pyx`` runs the template for a new topic; every task records a success."""
    import papermill

    b = build(tmp_path, monkeypatch, mode="interactive", failing=False)
    tpl = by_suffix(export_notebook(b.nb_path, "learn"), ".template.ipynb")
    for key, value in pyx_kernel_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYX_DIR", str(b.root))
    papermill.execute_notebook(str(tpl), str(tmp_path / "next.ipynb"), kernel_name="pyx", cwd=str(tmp_path),
                               parameters={"topic": "acme-order-2077", "entity_ids": [2077]}, progress_bar=False)
    lines = [json.loads(x) for x in (b.root / ".history.jsonl").read_text().splitlines()]
    new = [h for h in lines if h["topic"] == "acme-order-2077"]
    assert sorted(h["task"] for h in new) == sorted(b.manifests) and {h["status"] for h in new} == {"succeeded"}
    inspect_md = by_suffix(export_notebook(tmp_path / "next.ipynb", "inspect"), ".inspect.md")
    assert inspect_md.name.startswith("acme-order-2077.")  # found from the real kernel's outputs
    text = inspect_md.read_text("utf-8")
    assert text.count("**succeeded** in") == len(b.manifests) and "**not run**" not in text
    assert "| `entity_ids` | [2077] | injected |" in text
    assert assert_links_resolve(inspect_md) > 20


# ---------------------------------------------------------------- exporters and CLI


def test_exporters_never_change_the_callers_notebook(half: Built) -> None:
    """from_notebook_node works on a copy: the notebook object is equal before and after."""
    nb = nbformat.read(str(half.nb_path), as_version=4)
    before = copy.deepcopy(nb)
    resources = {"metadata": {"path": str(half.tmp), "name": "incident"}}
    for exporter in (InspectExporter(), SummaryExporter()):
        text, res = exporter.from_notebook_node(nb, copy.deepcopy(resources))
        assert text.startswith("# ") and res["output_extension"] == ".md"
    assert nb == before


def test_nbconvert_to_pyx_inspect_and_pyx_summary(half: Built) -> None:
    """``jupyter nbconvert --to pyx_inspect`` / ``pyx_summary`` write markdown whose links resolve where written."""
    env = {**os.environ, "PYX_DIR": ""}
    out_dir = half.tmp / "converted"
    for fmt, extra in (("pyx_inspect", []), ("pyx_summary", ["--output-dir", str(out_dir)])):
        proc = subprocess.run([str(VENV_BIN / "jupyter"), "nbconvert", "--to", fmt, str(half.nb_path), *extra],
                              cwd=half.tmp, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
    inspect_md, summary_md = half.tmp / "incident.md", out_dir / "incident.md"
    assert "## Steps + evidence" in inspect_md.read_text() and "## For the leader" in summary_md.read_text()
    assert assert_links_resolve(inspect_md) > 20 and assert_links_resolve(summary_md) > 5
    base = f"{half.session.topic}.{half.session.session_id}"
    assert (half.root / f"{base}.inspect.md").exists() and (half.root / f"{base}.summary.md").exists()
    assert_no_secret([inspect_md, summary_md], half.canaries)
    helped = subprocess.run([str(VENV_BIN / "jupyter"), "nbconvert", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0, helped.stderr[-2000:]


def test_interactive_only_notebook_exports(interactive: Built) -> None:
    """No papermill metadata: no parameters table, every section present, notes made after a failure kept."""
    written = export_notebook(interactive.nb_path, "all", prefixes=["acme_"])
    text = by_suffix(written, ".inspect.md").read_text("utf-8")
    assert "| injected |" not in text and "(run interactively)" in text
    assert "| `topic` | acme-order-1042 | default |" in text  # the parameters cell's values
    assert "| status | Mitigated; data correction in progress, ETA 2026-02-01 |" in text
    assert "papermill stopped" not in text and "**not run**" not in text
    summary = by_suffix(written, ".summary.md").read_text("utf-8")
    assert "**Status:** Mitigated" in summary and "**ETA.** Mitigated" in summary
    assert_no_secret(written, interactive.canaries)


def test_load_notebook_finds_the_investigation_and_links_notes(half: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory comes from the manifests the outputs name, from any cwd; notes link to their cell's task."""
    monkeypatch.chdir("/")
    inv = load_notebook(half.nb_path)
    assert inv.dir == half.root and inv.session_id == half.session.session_id and inv.executed_by == "papermill"
    cause = inv.notes_of("root_cause")[0]
    assert [s.task for s in cause.steps] == ["check_kafka"]
    assert [s.task for s in inv.notes_of("hypothesis")[0].steps] == []


def test_a_notebook_without_outputs_is_found_through_metadata_or_the_history(half: Built) -> None:
    """Outputs cleared: ``metadata.pyx`` names the session, else the directory's latest session is used."""
    nb = nbformat.read(str(half.nb_path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    bare = half.tmp / "cleared.ipynb"
    nbformat.write(nb, str(bare))
    inv = load_notebook(bare)
    assert inv.session_id == half.session.session_id and len(inv.run_steps()) == 5
    assert {s.task: s.cell_index is not None for s in inv.run_steps()}["check_db"]  # matched by execution count
    nb.metadata["pyx"] = {"dir": "temp", "topic": half.session.topic, "session_id": half.session.session_id}
    nbformat.write(nb, str(bare))
    assert load_notebook(bare).session_id == half.session.session_id


def test_pyx_export_and_pyx_learn_commands(half: Built, capsys: Any) -> None:
    """``pyx export --to all --out`` writes the contract names there; ``pyx learn`` takes an inspect log; bad input is 2."""
    out = half.tmp / "reports"
    assert pyx_main(["export", str(half.nb_path), "--to", "all", "--out", str(out), "--project-prefix", "acme_"]) == 0
    base = f"{half.session.topic}.{half.session.session_id}"
    for name in (f"{base}.inspect.md", f"{base}.summary.md", f"{base}.template.ipynb",
                 f"{base}.learn/project/SKILL.md", f"{base}.learn/global/SKILL.md",
                 f"{base}.learn/project/references/placeholders.json"):
        assert (out / name).is_file(), name
    assert assert_links_resolve(out / f"{base}.inspect.md") > 20
    capsys.readouterr()
    assert pyx_main(["learn", str(out / f"{base}.inspect.md"), "--dir", str(half.root)]) == 0
    assert pyx_main(["learn", str(half.root)]) == 0  # a session directory alone
    assert f"{base}.learn" in capsys.readouterr().out
    assert pyx_main(["export", str(half.tmp / "missing.ipynb")]) == 2
    assert pyx_main(["export", str(half.nb_path), "--to", "pdf"]) == 2


def test_report_modules_import_neither_papermill_nor_ipython() -> None:
    """The exporters load in a fresh interpreter without papermill or IPython (nbconvert --help stays safe)."""
    code = ("import sys, pyx_magics.report.exporters, pyx_magics.report.cli, pyx_magics.report.learn; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('papermill', 'IPython')]; print(bad)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
