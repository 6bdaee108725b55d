"""``<topic>.<session_id>.template.ipynb``: the investigation as a parameterized notebook.

One ``parameters``-tagged cell (topic, environment_label, time window start/end/timezone,
entity_ids, notes), a cell that turns them into one input file per task, then the original
``%%pyx_run`` cells with their code, outputs cleared. ``pyx rerun`` (papermill, pyx kernel) runs it
for the next incident; each task gets the standard keys it had originally plus its own parameters.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pyx_magics.core.hashing import atomic_write
from pyx_magics.report.model import Investigation, Step, _joined, _secret_param, task_of_cell

STANDARD = ("time_window", "entity_ids", "notes")

INPUT_HELPER = '''\
# pyx: one input file per task from the parameters above (only the keys the task used originally)
import json as _json
import tempfile as _tempfile
from pathlib import Path as _Path

_pyx_inputs_dir = _Path(_tempfile.mkdtemp(prefix="pyx-inputs-"))


def _pyx_input(task, keys, extra):
    data = dict(extra)
    if "time_window" in keys and time_window_start and time_window_end:
        data["time_window"] = {"start": time_window_start, "end": time_window_end, "timezone": timezone}
    if "entity_ids" in keys:
        data["entity_ids"] = list(entity_ids)
    if "notes" in keys:
        data["notes"] = notes
    path = _pyx_inputs_dir / f"{task}.input.json"
    path.write_text(_json.dumps(data), encoding="utf-8")
    return str(path)
'''


def _ident(task: str, used: set[str]) -> str:
    base = "pyx_input_" + re.sub(r"\W", "_", task)
    name, i = base, 2
    while name in used:
        name, i = f"{base}_{i}", i + 1
    used.add(name)
    return name


def _tasks(inv: Investigation) -> list[tuple[str, str, list[str], Step | None]]:
    """(task, code body, original options, last run) in notebook order, then tasks only the manifests know."""
    last_run: dict[str, Step] = {}
    for s in inv.run_steps():
        last_run[s.task] = s
    out: dict[str, tuple[str, str, list[str], Step | None]] = {}
    if inv.nb is not None:
        for cell in inv.nb.cells:
            if cell.get("cell_type") != "code":
                continue
            source = _joined(cell.get("source"))
            parsed = task_of_cell(source)
            if parsed and parsed[0] not in out:
                body = source.lstrip().split("\n", 1)[1] if "\n" in source.lstrip() else ""
                out[parsed[0]] = (parsed[0], body, parsed[1], last_run.get(parsed[0]))
    for task, step in last_run.items():
        if task not in out:
            out[task] = (task, str((step.manifest or {}).get("code", {}).get("source") or ""), [], step)
    return list(out.values())


def _defaults(inv: Investigation) -> dict[str, Any]:
    start = end = ""
    tz = "UTC"
    ids: list[Any] = []
    notes = ""
    for s in inv.run_steps():
        params = (s.manifest or {}).get("input", {}).get("params") or {}
        if not notes and isinstance(params.get("notes"), str):
            notes = params["notes"]
        tw = params.get("time_window")
        if isinstance(tw, dict) and not start and tw.get("start"):
            start, end, tz = str(tw.get("start")), str(tw.get("end") or ""), str(tw.get("timezone") or "UTC")
        for e in params.get("entity_ids") or []:
            if e not in ids:
                ids.append(e)
    return {"topic": inv.topic, "environment_label": inv.env_label, "time_window_start": start,
            "time_window_end": end, "timezone": tz, "entity_ids": ids, "notes": notes}


def build(inv: Investigation) -> Any:
    """The template as an nbformat v4 notebook (not written)."""
    import nbformat
    from nbformat import v4

    d = _defaults(inv)
    cells = [v4.new_markdown_cell(
        f"# {inv.topic}: investigation template\n\n"
        f"Made by `pyx learn` from session `{inv.session_id}`. Set the parameters (or pass them: "
        f"`pyx rerun THIS.ipynb -p topic NEW-TOPIC -p entity_ids '[1, 2]' -p time_window_start ...`), then run "
        "all cells. Every `%%pyx_run` cell records its evidence (manifest, log, outputs) in the investigation "
        "directory.")]
    params = v4.new_code_cell("\n".join([
        f"topic = {d['topic']!r}  # use a new topic for a new incident",
        f"environment_label = {d['environment_label']!r}  # prod, staging, local, ...",
        f"time_window_start = {d['time_window_start']!r}  # ISO 8601",
        f"time_window_end = {d['time_window_end']!r}",
        f"timezone = {d['timezone']!r}  # IANA name",
        f"entity_ids = {d['entity_ids']!r}",
        f"notes = {d['notes']!r}",
    ]))
    params.metadata["tags"] = ["parameters"]
    cells += [params, v4.new_code_cell("%pyx_topic $topic --env $environment_label")]
    used: set[str] = set()
    helper = [INPUT_HELPER, ""]
    task_cells = []
    for task, body, options, step in _tasks(inv):
        var = _ident(task, used)
        recorded = (step.manifest or {}).get("input", {}).get("params") or {} if step else {}
        keys = [k for k in STANDARD if k in recorded]
        extra = {k: v for k, v in recorded.items() if k not in STANDARD and not _secret_param(str(k))}
        helper.append(f"{var} = _pyx_input({task!r}, {keys!r}, {extra!r})")
        line = f"%%pyx_run {task} --input ${var}"
        if "--timeout" in options and options.index("--timeout") + 1 < len(options):
            line += f" --timeout {options[options.index('--timeout') + 1]}"
        note = []
        if step is not None:
            m = step.manifest or {}
            systems = sorted({str(t.get("system")) for t in m.get("targets") or []})
            note.append(f"**{task}**: originally {step.status}" + (f", touched {', '.join(systems)}" if systems else ""))
            if (m.get("mode") or {}).get("access") == "write":
                note.append("It ran with write access (`--allow-write REASON`); add that option back deliberately "
                            "if this incident needs it.")
        else:
            note.append(f"**{task}**: never ran in the original investigation.")
        task_cells += [v4.new_markdown_cell(" ".join(note)), v4.new_code_cell(f"{line}\n{body}")]
    cells.append(v4.new_code_cell("\n".join(helper).rstrip("\n")))
    cells += task_cells
    cells.append(v4.new_markdown_cell(
        "## Conclusions\n\nRecord them as you go: `%pyx_note finding ...`, `%pyx_note root_cause ...`, "
        "`%pyx_note fix ...`, `%pyx_note action ... owner=NAME due=YYYY-MM-DD`; then `pyx export THIS.ipynb --to all`."))
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "pyx", "display_name": "pyx (Python 3)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["pyx_template"] = {"topic": inv.topic, "session_id": inv.session_id}
    nbformat.validate(nb)
    return nb


def write(inv: Investigation, out_dir: Path) -> Path:
    import nbformat

    path = inv.report_path(out_dir, "template.ipynb")
    out_dir.mkdir(parents=True, exist_ok=True)
    text = nbformat.writes(build(inv)) + "\n"
    atomic_write(path, inv.redactor.text(text).encode("utf-8"))
    return path
