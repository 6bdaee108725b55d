"""The compact summary shown after a task: HTML in notebooks, text in terminals."""

from __future__ import annotations

import html
from typing import Any


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


class TaskSummary:
    """Status, duration and outputs of one run, rendered for whichever front end asks."""

    def __init__(self, m: dict[str, Any]) -> None:
        self.m = m

    @property
    def rows(self) -> list[tuple[str, str, str]]:
        return [(f["path"], _size(f["bytes"]), "" if f["rows"] is None else str(f["rows"]))
                for f in self.m["files"]["outputs"]]

    def headline(self) -> str:
        m = self.m
        dur = m["timing"]["duration_ms"] or 0
        return f"pyx {m['task']}: {m['status']} in {dur:.0f} ms · run {m['run_id']} · env {m['environment_label']}"

    def __repr__(self) -> str:
        lines = [self.headline()]
        if self.m["error"]:
            lines.append(f"  error: {self.m['error']['type']}: {self.m['error']['message']}")
        for path, size, rows in self.rows:
            lines.append(f"  {path}  {size}" + (f"  {rows} rows" if rows else ""))
        lines.append(f"  manifest: {self.m['task']}.{self.m['run_id']}.manifest.json  log: {self.m['log']['path']}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        m = self.m
        color = {"succeeded": "#1a7f37", "failed": "#cf222e", "refused": "#9a6700"}.get(m["status"], "#57606a")
        out = "".join(
            f"<tr><td><code>{html.escape(p)}</code></td><td>{s}</td><td>{r}</td></tr>" for p, s, r in self.rows
        ) or "<tr><td colspan=3><i>no output files</i></td></tr>"
        err = ""
        if m["error"]:
            err = f"<div><b>{html.escape(m['error']['type'])}</b>: {html.escape(m['error']['message'])}</div>"
        return (
            f'<div class="pyx-summary" data-status="{m["status"]}">'
            f'<b>pyx {html.escape(m["task"])}</b>: <span style="color:{color}">{m["status"]}</span> '
            f'in {(m["timing"]["duration_ms"] or 0):.0f} ms · run <code>{m["run_id"]}</code> · '
            f'env <b>{html.escape(m["environment_label"])}</b>{err}'
            f"<table><tr><th>output</th><th>size</th><th>rows</th></tr>{out}</table>"
            f'<small>manifest <code>{html.escape(m["task"])}.{m["run_id"]}.manifest.json</code> · '
            f'log <code>{html.escape(m["log"]["path"])}</code></small></div>'
        )
