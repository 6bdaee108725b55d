"""Kernel overhead: a notebook of N ``%%pyx_run`` cells on the pyx kernel vs the same cells, without
the magic, on the plain python3 kernel. Both through papermill with ``request_save_on_cell_execute=False``.

Usage: ``.venv/bin/python benchmarks/kernel_overhead.py [CELLS] [REPEATS]``
(or ``PYX_BENCH_CELLS`` / ``PYX_BENCH_REPEATS``; defaults 200 and 5). Runs alternate in order; the
best (minimum) wall time of each is reported, the least disturbed by other load on the machine.

Two informational metrics put the ratio in context: the plain cells on the pyx kernel (the cost of
the journal hooks alone), and a *floor*: on the pyx kernel, a cell magic that does nothing but the
file writes the contract asks of every run (``<task>.py``, ``<task>.input.json``, the manifest
written atomically twice, the log, the open-runs, history and session lines), with none of pyx's
own work. The pyx kernelspec goes into a temporary prefix.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import Row, check, print_rows  # noqa: E402

TARGET = 1.25


def make_notebook(path: Path, cells: int, *, pyx: bool, first: str | None = None, magic: str = "pyx_run") -> Path:
    """``cells`` cells (``%%<magic>`` tasks when ``pyx``), after an optional ``first`` cell."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    body = "x = {i}\ny = x * 2"
    nb.cells = [nbformat.v4.new_code_cell(first)] if first else []
    nb.cells += [nbformat.v4.new_code_cell((f"%%{magic} cell{i}\n" if pyx else "") + body.format(i=i))
                 for i in range(cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


FLOOR_SETUP = r'''%pyx_topic bench
import itertools as _it, os as _os
from IPython.core.magic import register_cell_magic as _register
from pyx_magics.core.hashing import atomic_write as _atomic

_D = str(get_ipython()._pyx_magics.session.dir)
_n = _it.count()
_manifest = b"x" * 2300  # about a trivial task's manifest


def _append(path, data):
    fd = _os.open(path, _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT, 0o644)
    _os.write(fd, data)
    _os.close(fd)


@_register
def contract_writes(line, cell):
    i = next(_n)
    _atomic(f"{_D}/{line}.py", cell.encode())
    _atomic(f"{_D}/{line}.input.json", b"{}\n")
    _atomic(f"{_D}/{line}.{i}.manifest.json", _manifest)
    _append(f"{_D}/.running", b"+x\n")
    _os.close(_os.open(f"{_D}/{line}.{i}.log.txt", _os.O_WRONLY | _os.O_CREAT, 0o644))
    exec(cell, get_ipython().user_ns)
    _atomic(f"{_D}/{line}.{i}.manifest.json", _manifest)
    _append(f"{_D}/.running", b"-x\n")
    _append(f"{_D}/.history.jsonl", _manifest[:300] + b"\n")
    fd = _os.open(f"{_D}/.state", _os.O_WRONLY | _os.O_CREAT, 0o644)
    _os.write(fd, _manifest[:200])
    _os.close(fd)
'''


def run(src: Path, out: Path, kernel: str, cwd: Path) -> float:
    import papermill

    t0 = time.perf_counter()
    papermill.execute_notebook(str(src), str(out), kernel_name=kernel, request_save_on_cell_execute=False,
                               progress_bar=False, log_output=False, cwd=str(cwd))
    return time.perf_counter() - t0


def cell_cycle_ms(out: Path) -> float:
    """Median time from one code cell's start to the next (the kernel's ``iopub.execute_input`` stamps in
    the output notebook): the per-cell cost, without the kernel's start and the notebook's save."""
    import json
    import statistics
    from datetime import datetime

    stamps = [datetime.fromisoformat(c["metadata"]["execution"]["iopub.execute_input"].replace("Z", "+00:00"))
              for c in json.loads(out.read_text("utf-8"))["cells"][1:]
              if c["cell_type"] == "code" and "iopub.execute_input" in c["metadata"].get("execution", {})]
    return statistics.median((b - a).total_seconds() * 1000 for a, b in zip(stamps, stamps[1:], strict=False))


def report(metric: str, pyx: float, base: float, pyx_runs: list[float], base_runs: list[float],
           target: float | None) -> Row:
    """Print the runs of one metric and return its table row."""
    print(f"{metric}")
    print(f"  pyx runs: {', '.join(f'{t:.3f}' for t in pyx_runs)}")
    print(f"  baseline runs: {', '.join(f'{t:.3f}' for t in base_runs)}")
    if target is None:
        return check(metric, pyx, base, "s", "plain cells on python3", "(informational)", lambda p, b: True)
    return check(metric, pyx, base, "s", "same cells, no magic, on python3", f"ratio <= {target}",
                 lambda p, b: p <= target * b)


def main(argv: list[str]) -> int:
    cells = int(argv[1]) if len(argv) > 1 else int(os.environ.get("PYX_BENCH_CELLS", "200"))
    repeats = int(argv[2]) if len(argv) > 2 else int(os.environ.get("PYX_BENCH_REPEATS", "5"))
    from kernel_ext.kernelspec import install

    with tempfile.TemporaryDirectory(prefix="pyx-bench-kernel-") as tmp:
        root = Path(tmp)
        install(prefix=str(root / "prefix"))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            p for p in (str(root / "prefix" / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")) if p)
        os.environ["PYX_TOPIC"] = "bench"
        pyx_nb = make_notebook(root / "pyx.ipynb", cells, pyx=True)
        base_nb = make_notebook(root / "base.ipynb", cells, pyx=False)
        # the journal needs a session: start one in a first cell (the baseline gets a trivial one)
        journal_nb = make_notebook(root / "journal.ipynb", cells, pyx=False, first="%pyx_topic bench")
        plain_nb = make_notebook(root / "plain.ipynb", cells, pyx=False, first="pass")
        floor_nb = make_notebook(root / "floor.ipynb", cells, pyx=True, first=FLOOR_SETUP, magic="contract_writes")
        runs = {"pyx": (pyx_nb, "pyx"), "baseline": (base_nb, "python3"), "journal": (journal_nb, "pyx"),
                "plain": (plain_nb, "python3"), "floor": (floor_nb, "pyx")}
        times: dict[str, list[float]] = {k: [] for k in runs}
        cycles: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(repeats):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for which in order:
                src, kernel = runs[which]
                work = root / f"{which}-{r}"
                work.mkdir()
                os.environ["PYX_DIR"] = str(work / "inv")
                times[which].append(run(src, work / "out.ipynb", kernel, work))
                cycles[which].append(cell_cycle_ms(work / "out.ipynb"))
                if which in ("pyx", "floor"):
                    found = len(list((work / "inv").glob("*.manifest.json")))
                    assert found == cells, f"expected {cells} manifests, found {found}"
                if which == "journal":
                    lines = sum(1 for _ in next((work / "inv").glob("*.journal.jsonl")).open())
                    assert lines == cells + 1, f"expected {cells + 1} journal lines, found {lines}"
        med = {k: min(v) for k, v in times.items()}
    rows = [report(f"papermill, {cells} %%pyx_run cells, pyx kernel, best of {repeats}", med["pyx"],
                   med["baseline"], times["pyx"], times["baseline"], TARGET),
            report(f"papermill, {cells} plain cells, pyx kernel (journal only), best of {repeats}",
                   med["journal"], med["plain"], times["journal"], times["plain"], None),
            report(f"papermill, {cells} cells doing only the contract's file writes, pyx kernel (floor), "
                   f"best of {repeats}", med["floor"], med["plain"], times["floor"], times["plain"], None)]
    import statistics

    cyc = {k: statistics.median(v) for k, v in cycles.items()}
    print(f"per cell (median start-to-start, median of {repeats} runs): pyx {cyc['pyx']:.2f} ms, "
          f"baseline {cyc['baseline']:.2f} ms, journal only {cyc['journal']:.2f} ms, floor {cyc['floor']:.2f} ms, "
          f"plain {cyc['plain']:.2f} ms")
    rows.append(check(f"per %%pyx_run cell, start to start, median of {repeats} runs", cyc["pyx"],
                      cyc["baseline"], "ms", "same cells, no magic, on python3", "(informational)",
                      lambda p, b: True))
    print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
