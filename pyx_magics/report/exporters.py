"""nbconvert exporters (``--to pyx_inspect``, ``--to pyx_summary``) and :func:`export_notebook`.

The exporters work on a copy of the notebook. Besides the text nbconvert writes (links relative
to nbconvert's output folder), they refresh the contract-named report in the investigation
directory (``<topic>.<session_id>.inspect.md`` / ``.summary.md``), where charts live too.
No papermill and no IPython here: ``jupyter nbconvert --help`` loads this module.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nbconvert.exporters import Exporter
from traitlets import Bool, List, Unicode

from pyx_magics.core.errors import PyxError, UsageProblem
from pyx_magics.report import inspect, learn, summary
from pyx_magics.report.model import Investigation, load_notebook, load_source

KINDS = ("inspect", "summary", "learn", "all")


class _PyxExporter(Exporter):
    output_mimetype = "text/markdown"
    file_extension = Unicode(".md").tag(config=True)
    investigation_dir = Unicode("", help="investigation directory (default: found from the notebook's outputs, "
                                "metadata.pyx, $PYX_DIR or ./temp)").tag(config=True)
    write_report = Bool(True, help="also write the contract-named report into the investigation directory").tag(
        config=True)
    kind = "inspect"
    # the report is built from the evidence, not from the cells: nbconvert's default preprocessors
    # (and the validation nbconvert runs after each) would only cost time
    default_preprocessors: List[Any] = List([])

    def _link_base(self, resources: dict[str, Any]) -> Path:
        writer = self.config.get("FilesWriter") or {}
        build = writer.get("build_directory") if "build_directory" in writer else ""
        path = (build if isinstance(build, str) else "") or (resources.get("metadata") or {}).get("path") or os.getcwd()
        return Path(path).resolve()

    def from_notebook_node(  # type: ignore[override]
        self, nb: Any, resources: dict[str, Any] | None = None, **kw: Any
    ) -> tuple[str, dict[str, Any]]:
        nb_copy = copy.deepcopy(nb)  # never touch the caller's notebook
        resources = self._init_resources(resources)
        if self._preprocessors:  # only preprocessors the user configured
            nb_copy, resources = self._preprocess(nb_copy, resources)
        meta = resources.get("metadata") or {}
        nb_path = None
        if meta.get("path") is not None and meta.get("name"):
            nb_path = Path(meta["path"] or ".") / f"{meta['name']}.ipynb"
        inv = load_notebook(nb_path, self.investigation_dir or None, nb=nb_copy, copy_nb=False)
        base = self._link_base(resources)
        if self.kind == "inspect":
            rendered = inspect.render(inv, inv.dir)
            if self.write_report:
                inspect.write(inv, inv.dir, rendered)
            text = rendered.text(base)
        else:
            if self.write_report:
                summary.write(inv, inv.dir)
            text = summary.render(inv, inv.dir, base)
        resources["output_extension"] = self.file_extension
        return text, resources


class InspectExporter(_PyxExporter):
    """``jupyter nbconvert --to pyx_inspect NB.ipynb``: the investigation log (markdown)."""

    export_from_notebook = "pyx inspect log"
    kind = "inspect"


class SummaryExporter(_PyxExporter):
    """``jupyter nbconvert --to pyx_summary NB.ipynb``: the teammate + leader summary (markdown)."""

    export_from_notebook = "pyx summary"
    kind = "summary"


class LeakFound(PyxError):
    """The global learn package still holds project identifiers (the files are written; do not share them)."""

    def __init__(self, leaks: list[learn.Leak], written: list[Path]) -> None:
        shown = "; ".join(str(leak) for leak in leaks[:3]) + (" ..." if len(leaks) > 3 else "")
        super().__init__(f"{len(leaks)} project identifier(s) left in the global learn package: {shown}",
                         hint="pass --project-prefix for the project's naming prefix, or edit the global package")
        self.leaks = leaks
        self.written = written

    def __reduce__(self) -> Any:
        return (PyxError, (self.message,))


def export_investigation(inv: Investigation, to: str = "all", out_dir: str | os.PathLike[str] | None = None,
                         prefixes: Iterable[str] = ()) -> tuple[list[Path], list[learn.Leak]]:
    """Write the reports of ``inv``; returns (files written, leaks found by the learn check)."""
    if to not in KINDS:
        raise UsageProblem(f"unknown export {to!r}", hint="use one of: " + ", ".join(KINDS))
    out = Path(out_dir).resolve() if out_dir else inv.dir
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    leaks: list[learn.Leak] = []
    if to in ("inspect", "all"):
        written += inspect.write(inv, out)
    if to in ("summary", "all"):
        written += summary.write(inv, out)
    if to in ("learn", "all"):
        result = learn.learn(inv, out, prefixes)
        written += result.written
        leaks = result.leaks
    return written, leaks


def export_notebook(nb_path: str | os.PathLike[str], to: str = "all", out_dir: str | os.PathLike[str] | None = None,
                    *, directory: str | os.PathLike[str] | None = None, prefixes: Iterable[str] = ()) -> list[Path]:
    """Export a notebook's investigation (``inspect``, ``summary``, ``learn`` or ``all``) with contract names.

    Files go to ``out_dir`` (default: the investigation directory). Raises :class:`LeakFound`
    (after writing) when the global learn package still holds a project identifier.
    """
    path = Path(nb_path)
    inv = load_notebook(path, directory) if path.suffix == ".ipynb" else load_source(path, directory)
    written, leaks = export_investigation(inv, to, out_dir, prefixes)
    if leaks:
        raise LeakFound(leaks, written)
    return written
