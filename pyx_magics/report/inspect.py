"""``<topic>.<session_id>.inspect.md``: the investigation log.

Sections (always present; an empty one says what is missing): Problem statement, Expected
behavior, Scope, Hypotheses, Steps + evidence, Root cause, Mitigation / Fix, Prevention. Each
step shows its task, status, duration, the systems it touched, relative links (with short
hashes) to its manifest, log and outputs, previews of diffs, tables and offsets (with charts),
its text output and, in brief, its error.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyx_magics import __version__
from pyx_magics.core.hashing import atomic_write
from pyx_magics.report import charts, md
from pyx_magics.report.model import SECTIONS, Investigation, Note, Step

TABLE_ROWS = 20
TABLE_COLS = 12
PREVIEWS_PER_STEP = 6
PREVIEW_BYTES = 8 << 20  # JSON larger than this is linked, not previewed
ACCESS_ROWS = 10

EMPTY = {
    "problem": "_No problem statement recorded yet: add `%pyx_note problem ...` or a markdown cell headed "
               "\"Problem statement\"._",
    "expected": "_No expected behavior recorded yet: add `%pyx_note expected ...`._",
    "scope": "_No scope recorded yet: add `%pyx_note scope ...` or give the tasks a `time_window` and "
             "`entity_ids`._",
    "hypothesis": "_No hypotheses recorded yet: add `%pyx_note hypothesis ...`._",
    "steps": "_No task recorded yet: run a `%%pyx_run TASK` cell (start with `%pyx_fingerprint`)._",
    "root_cause": "_No root cause recorded yet: add `%pyx_note root_cause ...`._",
    "fix": "_No mitigation or fix recorded yet: add `%pyx_note fix ...`._",
    "prevention": "_No prevention recorded yet: add `%pyx_note prevention ...` and "
                  "`%pyx_note action ... owner=NAME due=YYYY-MM-DD`._",
}
ORDER = ("problem", "expected", "scope", "hypothesis", "steps", "root_cause", "fix", "prevention")
TITLES = {**{k: v[0] for k, v in SECTIONS.items()}, "steps": "Steps + evidence"}


def assets_dir(inv: Investigation, out_dir: Path) -> Path:
    return out_dir / f"{inv.base_name}.inspect.assets"


def inspect_url(inv: Investigation, out_dir: Path, base: Path, step: Step | None = None) -> str:
    """Relative URL (from ``base``) of the inspect log in ``out_dir``, at ``step``'s anchor."""
    return md.href(inv.report_path(out_dir, "inspect.md"), base, step.anchor if step else "")


_LINK_MARK = re.compile("\x00([^\x00]*)\x00")


@dataclass
class Rendered:
    """The log with every file link kept as a marker, so one rendering serves any output folder."""

    raw: str
    assets: list[Path] = field(default_factory=list)

    def text(self, base: Path) -> str:
        """The markdown with links relative to folder ``base``."""
        base = base.resolve()
        cache: dict[str, str] = {}

        def rel(m: re.Match[str]) -> str:
            target = m.group(1)
            if target not in cache:
                cache[target] = md.href(Path(target), base)
            return cache[target]

        return _LINK_MARK.sub(rel, self.raw)


def render(inv: Investigation, out_dir: Path, *, charts_on: bool = True) -> Rendered:
    """Render the inspect log; charts are written into ``out_dir``'s assets folder."""
    r = _Inspect(inv, out_dir.resolve(), charts_on)
    return Rendered(inv.redactor.text("\n".join(r.document()) + "\n"), r.assets)


def write(inv: Investigation, out_dir: Path, rendered: Rendered | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = rendered or render(inv, out_dir)
    path = inv.report_path(out_dir, "inspect.md")
    atomic_write(path, rendered.text(out_dir).encode("utf-8"))
    return [path, *rendered.assets]


def note_refs(inv: Investigation, note: Note, inspect_at: str = "") -> str:
    """``In [7] · [step 3](…#step-3-x)``: where a note was made and the steps that prove it."""
    bits = []
    if note.execution_count is not None:
        bits.append(f"In [{note.execution_count}]")
    bits += [md.link(f"step {s.number}", f"{inspect_at}#{s.anchor}") for s in note.steps]
    return " · ".join(bits)


class _Inspect:
    def __init__(self, inv: Investigation, out_dir: Path, charts_on: bool) -> None:
        self.inv = inv
        self.out_dir = out_dir
        self.charts_on = charts_on
        self.assets: list[Path] = []

    def url(self, path: Path, fragment: str = "") -> str:
        """A link marker resolved by :meth:`Rendered.text` for the folder the text is written to."""
        return f"\x00{path}\x00" + (f"#{fragment}" if fragment else "")

    # ------------------------------------------------------------ document
    def document(self) -> list[str]:
        inv = self.inv
        out = [f"# Investigation log: {md.prose(inv.topic)}", ""]
        out += self.header()
        out += ["", "Contents: " + " · ".join(md.link(TITLES[k], "#" + md.slug(TITLES[k])) for k in ORDER), ""]
        if inv.parameters:
            out += ["## Parameters", "", "_Values the notebook ran with (papermill parameters; secret-looking "
                    "names masked)._", ""]
            out += md.table(["name", "value", "source"], ([md.code(p.name, True), md.cell(p.value, 120), p.source]
                                                           for p in inv.parameters))
            out.append("")
        for key in ORDER:
            out += [f"## {TITLES[key]}", ""]
            body = self.steps_section() if key == "steps" else self.notes_section(key)
            while body and body[-1] == "":
                body.pop()
            out += [*body, ""]
        return out

    def header(self) -> list[str]:
        inv = self.inv
        counts: dict[str, int] = {}
        for s in inv.steps:
            counts[s.status] = counts.get(s.status, 0) + 1
        rows = [["session", md.code(inv.session_id, True)], ["environment", f"**{md.cell(inv.env_label.upper())}**"]]
        if inv.notebook_path is not None:
            how = {"papermill": "executed by papermill", "interactive": "run interactively"}.get(inv.executed_by, "")
            nb_link = (md.link(md.cell(inv.notebook_path.name), self.url(inv.notebook_path))
                       if inv.notebook_path.exists() else md.cell(inv.notebook_path.name))
            rows.append(["notebook", f"{nb_link} ({how})" if how else nb_link])
        rows.append(["evidence directory", md.link(md.cell(inv.dir.name or str(inv.dir)), self.url(inv.dir) + "/")])
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        rows.append(["steps", f"{len(inv.steps)}" + (f" ({summary})" if summary else "")])
        status = inv.notes_of("status")
        if status:
            rows.append(["status", md.cell(status[-1].text, 160)])
        stopped = next((s for s in inv.steps if s.status != "succeeded" and s.manifest is not None), None)
        if inv.executed_by == "papermill" and stopped and any(s.manifest is None for s in inv.steps):
            rows.append(["papermill", f"stopped at {md.link(md.cell(stopped.title), '#' + stopped.anchor)}; "
                         "the cells after it did not run"])
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append(["generated", f"{stamp} by pyx {__version__}"])
        return md.table(["", ""], rows)

    # ------------------------------------------------------------ note sections
    def note_lines(self, notes: list[Note]) -> list[str]:
        """Journal notes as bullets, then markdown blocks as written; each with the steps that prove it."""
        out: list[str] = []
        for note in (n for n in notes if n.source != "markdown"):
            refs = note_refs(self.inv, note)
            extra = ""
            if note.kind == "action":
                extra = "".join(f" · {k} **{md.prose(v)}**" for k, v in (("owner", note.owner), ("due", note.due)) if v)
            out.append(f"- {md.prose(note.text)}{extra}" + (f" _({refs})_" if refs else ""))
        if out:
            out.append("")
        for note in (n for n in notes if n.source == "markdown"):
            refs = note_refs(self.inv, note)
            out += [*note.text.split("\n"), ""]
            if refs:
                out += [f"_Evidence: {refs}_", ""]
        return out

    def notes_section(self, key: str) -> list[str]:
        inv = self.inv
        out = self.note_lines(inv.notes_of(key))
        if key == "scope":
            out += self.scope_from_inputs()
            impact = inv.notes_of("impact")
            if impact:
                out += ["**Impact**", "", *self.note_lines(impact)]
        if key == "prevention":
            actions = inv.notes_of("action")
            if actions:
                out += ["**Actions**", ""]
                out += md.table(["action", "owner", "due", "evidence"], (
                    [md.cell(a.text, 160), md.cell(a.owner or "—"), md.cell(a.due or "—"),
                     note_refs(inv, a) or "—"] for a in actions))
                out.append("")
        if key == "root_cause" and not out:
            findings = inv.notes_of("finding")
            if findings:
                out += ["_No root cause recorded yet: add `%pyx_note root_cause ...`. Findings so far:_", ""]
                return out + self.note_lines(findings)
        return out or [EMPTY[key]]

    def scope_from_inputs(self) -> list[str]:
        windows: list[str] = []
        ids: list[str] = []
        for s in self.inv.run_steps():
            params = (s.manifest or {}).get("input", {}).get("params") or {}
            tw = params.get("time_window")
            if isinstance(tw, dict) and tw.get("start"):
                w = f"{tw.get('start')} → {tw.get('end')}" + (f" ({tw['timezone']})" if tw.get("timezone") else "")
                if w not in windows:
                    windows.append(w)
            for e in params.get("entity_ids") or []:
                if str(e) not in ids:
                    ids.append(str(e))
        out = []
        if windows:
            out.append("- Time window (task inputs): " + "; ".join(md.code(w) for w in windows[:5]))
        if ids:
            more = f" … and {len(ids) - 30} more" if len(ids) > 30 else ""
            out.append(f"- Entity ids (task inputs, {len(ids)}): " + ", ".join(md.code(i) for i in ids[:30]) + more)
        return [*out, ""] if out else []

    # ------------------------------------------------------------ steps
    def steps_section(self) -> list[str]:
        inv = self.inv
        if not inv.steps:
            return [EMPTY["steps"]]
        out = md.table(["#", "task", "status", "duration", "systems", "outputs"], (
            [str(s.number), md.link(md.cell(s.task), "#" + s.anchor), md.cell(s.status),
             md.duration((s.manifest or {}).get("timing", {}).get("duration_ms")) if s.manifest else "—",
             md.cell(", ".join(sorted({str(t.get("system")) for t in (s.manifest or {}).get("targets") or []})) or "—"),
             str(len((s.manifest or {}).get("files", {}).get("outputs") or [])) if s.manifest else "—"]
            for s in inv.steps))
        out.append("")
        loose = [n for n in inv.notes_of("finding") if not n.steps]
        if loose:
            out += ["**Findings before any task**", "", *self.note_lines(loose)]
        findings: dict[int, list[Note]] = {}
        for n in inv.notes_of("finding"):
            if n.steps:
                findings.setdefault(n.steps[-1].number, []).append(n)
        for step in inv.steps:
            out += self.step(step, findings.get(step.number, []))
        return out

    def step(self, step: Step, findings: list[Note]) -> list[str]:
        out = [f'<a id="{step.anchor}"></a>', "", f"### {md.prose(step.title)}", ""]
        m = step.manifest
        if m is None:
            where = f" (notebook cell {step.cell_index + 1})" if step.cell_index is not None else ""
            return [*out, f"**{step.status}**{where}: {step.pending}.", ""]
        timing = m.get("timing") or {}
        mode = m.get("mode") or {}
        bits = [f"**{md.prose(step.status)}** in {md.duration(timing.get('duration_ms'))}",
                f"run {md.code(step.run_id)}", f"started {md.code(timing.get('started_at') or '?')}"]
        if step.execution_count is not None:
            bits.append(f"`In [{step.execution_count}]`")
        bits.append("write access: " + md.prose(md.shorten(mode.get("reason") or "", 120))
                    if mode.get("access") == "write" else "read-only")
        bits.append(f"env {md.prose(str(m.get('environment_label', '?')).upper())}")
        out += [" · ".join(bits), ""]
        out += self.inputs(m)
        out += self.targets(m)
        out += self.access(m)
        out += self.evidence(step, m)
        out += self.previews(m)
        out += self.error(m)
        out += self.text_output(m)
        source = (m.get("code") or {}).get("source") or ""
        if source.strip():
            lines, _ = md.bounded_lines(source, head=40, tail=10)
            out += ["<details><summary>Code</summary>", "", *md.fence("\n".join(lines), "python"), "", "</details>", ""]
        if findings:
            out += ["**Findings**", "", *self.note_lines(findings)]
        return out

    def inputs(self, m: dict[str, Any]) -> list[str]:
        params = (m.get("input") or {}).get("params") or {}
        if not params:
            return []
        bits = []
        tw = params.get("time_window")
        if isinstance(tw, dict):
            bits.append(f"time window {md.code(tw.get('start'))} → {md.code(tw.get('end'))}"
                        + (f" ({md.prose(str(tw['timezone']))})" if tw.get("timezone") else ""))
        if params.get("entity_ids"):
            ids = [str(e) for e in params["entity_ids"]]
            bits.append("entity ids " + ", ".join(md.code(i) for i in ids[:10]) + (" …" if len(ids) > 10 else ""))
        if params.get("notes"):
            bits.append("notes: " + md.prose(md.shorten(params["notes"], 160)))
        others = {k: v for k, v in params.items() if k not in ("time_window", "entity_ids", "notes")}
        if others:
            bits.append("parameters " + ", ".join(md.code(f"{k}={md._scalar(v)}") for k, v in list(others.items())[:10]))
        return ["Input: " + " · ".join(bits), ""]

    def targets(self, m: dict[str, Any]) -> list[str]:
        targets = m.get("targets") or []
        if not targets:
            return []
        rows = []
        for t in targets:
            ep = t.get("endpoint") or {}
            ident = t.get("identity") or {}
            shown = ", ".join(f"{k}={md._scalar(v)}" for k, v in list(ident.items())[:8])
            rows.append([md.cell(t.get("system")), md.cell(t.get("alias")),
                         md.code(f"{ep.get('host')}:{ep.get('port')}", True) if ep else "",
                         md.cell(shown, 200), md.code(t.get("fingerprint"), True) if t.get("fingerprint") else "—"])
        return ["**Systems touched**", "", *md.table(["system", "alias", "endpoint", "identity", "fingerprint"], rows), ""]

    def access(self, m: dict[str, Any]) -> list[str]:
        acc = m.get("data_access") or []
        if not acc:
            return []
        rows = [[md.cell(a.get("target")), md.cell(a.get("op")), md.code(md.shorten(a.get("statement") or "", 200), True),
                 md.cell(a.get("rows")), md.cell(a.get("duration_ms"))] for a in acc[:ACCESS_ROWS]]
        out = [f"**Queries and commands** ({len(acc)})", "",
               *md.table(["target", "op", "statement", "rows", "ms"], rows)]
        if len(acc) > ACCESS_ROWS:
            out.append(f"\n_… {len(acc) - ACCESS_ROWS} more in the manifest._")
        return [*out, ""]

    def file_row(self, path: Path | None, label: str, role: str, recorded: str | None, rows: Any,
                 nbytes: Any) -> list[str]:
        now = self.inv.file_hash(path) if path else None
        if path is None or now is None:
            return [md.cell(label) + " ⚠ missing", md.cell(role), md.cell(rows), md.size(nbytes),
                    md.code(md.short_sha(recorded), True) if recorded else ""]
        sha = recorded or now[0]
        cell = md.code(md.short_sha(sha), True)
        if recorded and now[0] != recorded:
            cell += f" ⚠ changed since recorded (now {md.code(md.short_sha(now[0]), True)})"
        return [md.link(md.cell(label), self.url(path)), md.cell(role), md.cell(rows), md.size(nbytes), cell]

    def evidence(self, step: Step, m: dict[str, Any]) -> list[str]:
        inv = self.inv
        rows = []
        if step.manifest_path is not None:
            h = inv.file_hash(step.manifest_path)
            rows.append(self.file_row(step.manifest_path, step.manifest_path.name, "manifest", None, None,
                                      h[1] if h else None))
        log = m.get("log") or {}
        if log.get("path"):
            rows.append(self.file_row(inv.artifact(log["path"]), log["path"], "log", log.get("sha256"), None,
                                      log.get("bytes")))
        for f in (m.get("files") or {}).get("outputs") or []:
            rows.append(self.file_row(inv.artifact(f["path"]), f["path"], f.get("role") or "output",
                                      f.get("sha256"), f.get("rows"), f.get("bytes")))
        return ["**Evidence**", "", *md.table(["file", "role", "rows", "size", "sha256"], rows), ""]

    # ------------------------------------------------------------ output previews
    def previews(self, m: dict[str, Any]) -> list[str]:
        out: list[str] = []
        shown = 0
        for f in (m.get("files") or {}).get("outputs") or []:
            if shown >= PREVIEWS_PER_STEP:
                out += ["_More outputs: see the evidence table._", ""]
                break
            path = self.inv.artifact(f["path"])
            if path is None or not path.is_file():
                continue
            lines = self.preview(path, f, m)
            if lines:
                shown += 1
                n = f.get("rows")
                rows = f" ({n} row{'' if n == 1 else 's'})" if n is not None else ""
                out += [f"**{md.code(f['path'])}**{rows}", "", *lines, ""]
        return out

    def preview(self, path: Path, f: dict[str, Any], m: dict[str, Any]) -> list[str]:
        name = path.name.lower()
        if name.endswith(".csv"):
            return self.csv_preview(path, f, m)
        if name.endswith(".json"):
            data = charts.load_json(path, PREVIEW_BYTES)
            if data is None:
                return []
            return self.json_preview(data, path, f, m)
        if name.endswith(".jsonl"):
            return self.text_file(path, head=5, lang="json")
        if name.endswith((".txt", ".log", ".md", ".sql")):
            return self.text_file(path, head=15)
        if name.endswith((".png", ".svg", ".jpg", ".jpeg", ".gif")):
            return [f"![{md.prose(path.name)}]({self.url(path)})"]
        return []

    def text_file(self, path: Path, head: int, lang: str = "text") -> list[str]:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(64 << 10)
        except OSError:
            return []
        text = md.clean_text(raw.decode("utf-8", "replace"))
        lines, _ = md.bounded_lines(text, head=head, tail=0)
        return md.fence("\n".join(lines), lang) if lines else []

    def csv_preview(self, path: Path, f: dict[str, Any], m: dict[str, Any]) -> list[str]:
        rows: list[list[str]] = []
        try:
            with open(path, newline="", encoding="utf-8", errors="replace") as fh:
                reader = csv.reader(fh)
                header = next(reader, None)
                for i, row in enumerate(reader):
                    if i >= TABLE_ROWS:
                        break
                    rows.append(row)
        except (OSError, csv.Error):
            return []
        if not header:
            return []
        cols = header[:TABLE_COLS]
        out = md.table([md.cell(c, 40) or " " for c in cols],
                       ([md.cell(r[i] if i < len(r) else "", 60) for i in range(len(cols))] for r in rows))
        total = f.get("rows")
        if isinstance(total, int) and total > len(rows):
            out.append(f"\n_First {len(rows)} of {total} rows._")
        if len(header) > TABLE_COLS:
            out.append(f"\n_First {TABLE_COLS} of {len(header)} columns._")
        if self.charts_on:
            found = charts.csv_partitions(path)
            if found:
                col, points = found
                dest = assets_dir(self.inv, self.out_dir) / f"{col.lower()}.{path.stem}.png"
                out += ["", *self.chart(points, f"{col} per partition · {path.name}", col.lower(), dest, path)]
        return out

    def json_preview(self, data: Any, path: Path, f: dict[str, Any], m: dict[str, Any]) -> list[str]:
        groups = charts.offsets_partitions(data)
        if groups:
            return self.offsets(groups, m, path)
        diff = diff_entries(data)
        if diff is not None:
            return self.diff(data, diff)
        if (f.get("role") == "fingerprint" or path.name.startswith("fingerprint.")) and isinstance(data, dict):
            flat = [(k, v) for k, v in data.items() if not isinstance(v, (dict, list))][:15]
            if flat:
                return md.table(["fact", "value"], ([md.cell(k), md.cell(v, 120)] for k, v in flat))
        text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False, default=str)
        lines, _ = md.bounded_lines(text, head=20, tail=0)
        return md.fence("\n".join(lines), "json")

    def offsets(self, groups: list[tuple[str | None, list[dict[str, Any]]]], m: dict[str, Any], path: Path) -> list[str]:
        out: list[str] = []
        for gi, (topic, parts) in enumerate(groups[:4]):
            keys = [k for k in ("partition", "current_offset", "log_end_offset", "lag") if any(k in p for p in parts)]
            keys += [k for k in parts[0] if k not in keys and k not in ("group", "topic")][: max(0, 6 - len(keys))]
            if topic:
                out += [f"Topic {md.code(topic)}", ""]
            out += md.table(keys, ([md.cell(p.get(k)) for k in keys] for p in parts[:TABLE_ROWS]))
            lags = [p["lag"] for p in parts if isinstance(p.get("lag"), (int, float))]
            if len(parts) > TABLE_ROWS:
                out.append(f"\n_First {TABLE_ROWS} of {len(parts)} partitions._")
            if lags:
                out.append(f"\nTotal lag **{sum(lags):g}** over {len(parts)} partitions (max {max(lags):g}).")
            if self.charts_on and lags:
                suffix = f".{gi + 1}" if len(groups) > 1 else ""
                dest = assets_dir(self.inv, self.out_dir) / f"lag.{m['run_id']}{suffix}.png"
                points = [(str(p["partition"]), float(p["lag"])) for p in parts if isinstance(p.get("lag"), (int, float))]
                out += ["", *self.chart(points, f"lag per partition · {topic or path.name}", "lag", dest, path)]
            out.append("")
        return out

    def chart(self, points: list[tuple[str, float]], title: str, ylabel: str, dest: Path, source: Path) -> list[str]:
        try:
            fresh = dest.exists() and dest.stat().st_mtime >= source.stat().st_mtime
            if not fresh:
                charts.bar_chart(points, title, ylabel, dest)
        except ImportError:
            return ["_Chart skipped: install matplotlib (`pip install 'pyx-magics[charts]'`)._"]
        except (OSError, ValueError) as exc:
            return [f"_Chart skipped: {md.prose(type(exc).__name__)}._"]
        self.assets.append(dest)
        return [f"![{md.prose(title)}]({self.url(dest)})"]

    def diff(self, data: Any, entries: list[dict[str, Any]]) -> list[str]:
        out: list[str] = []
        if isinstance(data, dict):
            facts = [f"{k}: {md.code(md._scalar(v), False)}" for k, v in data.items()
                     if not isinstance(v, list) and not (isinstance(v, dict) and len(v) > 6)][:8]
            if facts:
                out += [" · ".join(facts), ""]
        if not entries:
            return [*out, "_No differences._"]
        preferred = ("key", "field", "column", "path", "left", "right", "status", "kind", "change")
        present = [k for k in preferred if any(k in e for e in entries)]
        others = [k for e in entries[:50] for k in e if k not in present]
        cols = (present + list(dict.fromkeys(others)))[:8]
        same = ("equal", "same", "match", "unchanged", "ok")
        ordered = [e for e in entries if str(e.get("status", "")).lower() not in same]
        ordered += [e for e in entries if str(e.get("status", "")).lower() in same]
        out += md.table(cols, ([md.cell(e.get(c), 60) for c in cols] for e in ordered[:TABLE_ROWS]))
        if len(entries) > TABLE_ROWS:
            out.append(f"\n_First {TABLE_ROWS} of {len(entries)} entries (differences first)._")
        return out

    # ------------------------------------------------------------ error and text output
    def error(self, m: dict[str, Any]) -> list[str]:
        err = m.get("error")
        if not err:
            return []
        msg = md.clean_text(str(err.get("message") or ""))
        first = msg.split("\n")
        out = [f"**Error**: {md.code(err.get('type') or 'Error')}: {md.prose(md.shorten(first[0], 300))}", ""]
        tb = md.clean_text(str(err.get("traceback") or ""))
        if tb.strip():
            lines = tb.rstrip().split("\n")
            if len(lines) > 8:
                lines = [*lines[:2], f"… ({len(lines) - 6} lines omitted) …", *lines[-4:]]
            out += [*md.fence("\n".join(lines), "text"), ""]
        return out

    def text_output(self, m: dict[str, Any]) -> list[str]:
        log = m.get("log") or {}
        path = self.inv.artifact(log["path"]) if log.get("path") else None
        if path is None:
            return []
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                head = fh.read(32 << 10)
                tail = b""
                if size > (48 << 10):
                    fh.seek(size - (16 << 10))
                    tail = fh.read()
        except OSError:
            return []
        text = head.decode("utf-8", "replace")
        if tail:
            text += "\n… (middle of the log omitted) …\n" + tail.decode("utf-8", "replace").split("\n", 1)[-1]
        cut = text.rfind("Traceback (most recent call last):")
        if (m.get("error") or {}).get("traceback") and cut >= 0:
            text = text[:cut]  # the error is shown in brief above
        lines, _ = md.bounded_lines(md.clean_text(text), head=20, tail=8)
        if not lines:
            return []
        return ["**Output** (from the log)", "", *md.fence("\n".join(lines), "text"), ""]


def diff_entries(data: Any) -> list[dict[str, Any]] | None:
    """The entries of a diff JSON (a list of dicts with field/left/right/status-like keys), else None."""
    marks = {"left", "right", "field", "status", "key", "change"}
    candidates: list[Any] = []
    if isinstance(data, list):
        candidates.append(data)
    elif isinstance(data, dict):
        for key in ("entries", "differences", "diffs", "changes", "fields", "rows", "items", "diff"):
            if isinstance(data.get(key), list):
                candidates.append(data[key])
        candidates += [v for v in data.values() if isinstance(v, list)]
    for c in candidates:
        dicts = [e for e in c if isinstance(e, dict)]
        if dicts and len(dicts) == len(c) and sum(1 for k in marks if any(k in e for e in dicts[:20])) >= 2:
            return dicts
    if isinstance(data, dict) and any(isinstance(data.get(k), list) and not data[k]
                                      for k in ("entries", "differences", "diffs", "changes")):
        return []
    return None
