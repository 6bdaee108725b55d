"""Inspect export of a 500-cell investigation notebook vs ``nbconvert --to markdown`` of the same notebook.

Both in process (``Exporter.from_filename``), after one warm-up each; the median of ``--repeat`` runs.
The pyx side does its whole job each time: reads the manifests and journal, re-hashes every linked
artifact, renders the log twice (nbconvert text + the contract-named file it also writes) and
draws the partition charts (the chart folder is removed before each run, so none is reused).

    .venv/bin/python benchmarks/export.py [--cells 500] [--repeat 5]   (or PYX_BENCH_CELLS / PYX_BENCH_REPEAT)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import check, print_rows  # noqa: E402

TARGET = 1.5

TASK = """\
rows = "id,status,amount\\n" + "".join(f"{{k}},paid,{{k * 3}}\\n" for k in range({n}))
pyx.save("db_rows.orders.csv", rows)
pyx._run.add_access({{"target": "main", "op": "query", "rows": {n}, "duration_ms": 1.0,
    "statement": "select id, status, amount from orders where batch = {i}"}})
print("batch {i}: {n} rows")
"""
OFFSETS = """\
pyx.save("kafka_offsets.events.json", {{"topic": "order-events", "group": "order-service", "partitions": [
    {{"partition": p, "current_offset": 100 * p, "log_end_offset": 100 * p + (p * 7) % 23, "lag": (p * 7) % 23}}
    for p in range(12)]}})
"""


def build(root: Path, cells: int) -> Path:
    """A notebook of ``cells`` cells: 40% recorded tasks, 20% notes, 40% markdown and plain code."""
    import nbformat
    from nbformat import v4

    from pyx_magics.display import TaskSummary
    from pyx_magics.execute import in_process
    from pyx_magics.journal import NOTE_KINDS
    from pyx_magics.journal import append as journal_append
    from pyx_magics.runner import Session, TaskRequest, run_task

    session = Session.start(root / "temp", "bench-topic", "local", resume=False)
    out = []
    ec = 0
    devnull = open(os.devnull, "w")  # noqa: SIM115 - kept for the whole build
    for i in range(cells):
        kind = i % 10
        if kind < 4:
            ec += 1
            code = (OFFSETS if i % 50 == 0 else TASK).format(i=i, n=5 + i % 30)
            _, m = run_task(session, TaskRequest(f"task_{i}", code, {"entity_ids": [i]}, execution_count=ec),
                            in_process(code, {}, live_out=devnull, live_err=devnull))
            s = TaskSummary(m)
            cell = v4.new_code_cell(f"%%pyx_run task_{i}\n{code}", execution_count=ec)
            cell.outputs = [v4.new_output("stream", name="stdout", text=f"batch {i}\n"),
                            v4.new_output("display_data", data={"text/plain": repr(s), "text/html": s._repr_html_()})]
            out.append(cell)
        elif kind < 6:
            ec += 1
            note = NOTE_KINDS[i % len(NOTE_KINDS)]
            journal_append(session.dir, session.topic, session.session_id, {
                "kind": "note", "note": note, "text": f"note {i} about batch {i - 1}", "execution_count": ec,
                "at": datetime.now(UTC).isoformat(timespec="milliseconds")})
            out.append(v4.new_code_cell(f"%pyx_note {note} note {i}", execution_count=ec, outputs=[
                v4.new_output("stream", name="stdout", text=f"noted {note}: note {i}\n")]))
        elif kind < 8:
            out.append(v4.new_markdown_cell(f"## Findings\n\nBatch {i} looks **fine**; see the table above.\n"))
        else:
            ec += 1
            out.append(v4.new_code_cell(f"x = {i} * 2\nx", execution_count=ec, outputs=[
                v4.new_output("execute_result", data={"text/plain": str(i * 2)}, execution_count=ec)]))
    devnull.close()
    nb_path = root / "bench.ipynb"
    nbformat.write(v4.new_notebook(cells=out), str(nb_path))
    return nb_path


def interleaved(fns: Mapping[str, Callable[[], object]], repeat: int,
                before: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    """Median seconds of each function, runs alternated so machine noise hits every side alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            prep = before.get(name)
            if prep is not None:
                prep()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=int(os.environ.get("PYX_BENCH_CELLS", 500)))
    ap.add_argument("--repeat", type=int, default=int(os.environ.get("PYX_BENCH_REPEAT", 5)))
    args = ap.parse_args(argv)
    from nbconvert.exporters import MarkdownExporter

    from pyx_magics.report.exporters import InspectExporter

    root = Path(tempfile.mkdtemp(prefix="pyx-bench-export-"))
    try:
        nb = build(root, args.cells)
        pyx_exp, md_exp = InspectExporter(), MarkdownExporter()
        text, _ = pyx_exp.from_filename(str(nb))  # warm-up (imports, matplotlib, templates)
        md_exp.from_filename(str(nb))
        steps = text.count('<a id="step-')
        assets = next((root / "temp").glob("*.inspect.assets"))

        def clear() -> None:
            shutil.rmtree(assets, ignore_errors=True)

        runs = {"cold": lambda: pyx_exp.from_filename(str(nb)), "warm": lambda: pyx_exp.from_filename(str(nb)),
                "base": lambda: md_exp.from_filename(str(nb))}
        t = interleaved(runs, args.repeat, {"cold": clear})
        charts = len(list(assets.glob("*.png")))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"# {args.cells} cells, {steps} steps, {charts} charts, median of {args.repeat} interleaved runs, in process")
    print_rows([
        check(f"{label}, {args.cells} cells", t[key], t["base"], "s", "nbconvert --to markdown, in process",
              f"ratio <= {TARGET}", lambda p, b: p <= TARGET * b)
        for key, label in (("cold", "inspect export, charts drawn"), ("warm", "inspect re-export, charts reused"))
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
