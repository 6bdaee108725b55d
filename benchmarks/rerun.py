"""Benchmark: `pyx rerun` (papermill on the pyx kernel + redacted output + compare + report) against a
plain papermill run of the same notebook on the same kernel. Target: ratio <= 1.3.

Usage: .venv/bin/python benchmarks/rerun.py [--notebook NB] [--rows N] [--repeat R]
Defaults: notebooks/incident_template.ipynb when it exists (it needs the services its cells use),
else a generated notebook of `%%pyx_run` cells over a CSV of PYX_BENCH_ROWS rows (10000);
PYX_BENCH_REPEAT (3) timed runs of each, interleaved; the medians are compared.
Both sides: kernel `pyx`, no save after each cell, no progress bar, same parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import check, print_rows  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "notebooks" / "incident_template.ipynb"
TARGET = 1.3


def build_notebook(ws: Path, rows: int) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    params = 'topic = "bench"\ndata_path = "orders.csv"\nthreshold = 500\n'
    load = ('%%pyx_run load\nimport pandas as pd\ndf = pd.read_csv(data_path)\nbig = df[df.amount >= threshold]\n'
            'pyx.save("orders_big.csv", big)\npyx.save("stats.json", {"n": len(big), "total": int(big.amount.sum())})\n')
    by_status = ('%%pyx_run by_status\npyx.save("by_status.csv", df.groupby("status", as_index=False).amount.sum())\n')
    plain = 'summary = df.describe()\nsummary'
    cells = [new_code_cell(params, metadata={"tags": ["parameters"]}), new_code_cell("import pandas as pd"),
             new_code_cell(load), new_code_cell(by_status), new_code_cell(plain)]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "pyx", "display_name": "pyx", "language": "python"}})
    statuses = ("new", "paid", "shipped", "refunded")
    with open(ws / "orders.csv", "w") as f:
        f.write("id,amount,status\n")
        for i in range(rows):
            f.write(f"{i},{(i * 7919) % 1000},{statuses[i % 4]}\n")
    path = ws / "bench.ipynb"
    nbformat.write(nb, path)
    return path


def ensure_kernel(prefix: Path) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("pyx")
        return
    except NoSuchKernel:
        pass
    from kernel_ext.kernelspec import install

    install(prefix=str(prefix))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH", "")) if p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--notebook", default=None)
    ap.add_argument("--rows", type=int, default=int(os.environ.get("PYX_BENCH_ROWS", "10000")))
    ap.add_argument("--repeat", type=int, default=int(os.environ.get("PYX_BENCH_REPEAT", "3")))
    ap.add_argument("--generated", action="store_true", help="use the generated notebook even if the template exists")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pyx-bench-rerun-"))
    try:
        ensure_kernel(tmp / "jupyter")
        for key in ("PYX_DIR", "PYX_TOPIC", "PYX_SESSION_ID"):
            os.environ.pop(key, None)
        ws = tmp / "ws"
        ws.mkdir()
        source = Path(args.notebook) if args.notebook else (TEMPLATE if TEMPLATE.exists() else None)
        with contextlib.ExitStack() as stack:
            if source is not None and not args.generated:
                notebook = ws / source.name
                shutil.copyfile(source, notebook)
                what = f"{source.name} on seeded local services"
                stack.enter_context(seeded_services(tmp))
            else:
                notebook = build_notebook(ws, args.rows)
                what = f"generated notebook, {args.rows} rows"
            return measure(notebook, ws, args.repeat, what)
    finally:
        if not os.environ.get("PYX_BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def seeded_services(tmp: Path) -> Iterator[None]:
    """Local PostgreSQL/Redis/Kafka seeded with the demo incident, exported to this process's env."""
    from pyx_magics.demo.run import environ
    from pyx_magics.demo.seed import seed_all
    from pyx_magics.services import LocalServices

    with LocalServices(root=tmp / "services") as svc:
        env = svc.env()
        seed_all(env)
        with environ(env):
            yield


def measure(notebook: Path, ws: Path, repeat: int, what: str) -> int:
    """Run the original once, then interleave plain papermill and `pyx rerun` of it; print the medians."""
    import papermill as pm

    from pyx_magics import rerun

    original = ws / "original.ipynb"
    try:
        pm.execute_notebook(str(notebook), str(original), kernel_name="pyx", progress_bar=False,
                            request_save_on_cell_execute=False, cwd=str(ws))
    except pm.PapermillExecutionError as exc:
        print(f"the original run of {notebook.name} failed at cell [{exc.exec_count}] "
              f"{exc.source.splitlines()[0] if exc.source else ''!r} ({exc.ename}); "
              "fix it or pass --generated", file=sys.stderr)
        return 1
    params = rerun.recorded_parameters(rerun.read_notebook(original)).values

    def baseline(i: int) -> float:
        t0 = time.perf_counter()
        pm.execute_notebook(str(original), str(ws / f"plain{i}.ipynb"), parameters=params, kernel_name="pyx",
                            progress_bar=False, request_save_on_cell_execute=False, cwd=str(ws))
        return time.perf_counter() - t0

    def pyx(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            outcome = rerun.rerun(str(original), {}, output=str(ws / f"rerun{i}.ipynb"), progress_bar=False)
        return time.perf_counter() - t0, outcome.exit_code

    baseline(-1)  # warm the page cache and the kernel's imports once for both sides
    base_times, pyx_times, codes = [], [], []
    for i in range(repeat):
        base_times.append(baseline(i))
        t, code = pyx(i)
        pyx_times.append(t)
        codes.append(code)
    b, p = statistics.median(base_times), statistics.median(pyx_times)
    verdicts = "all reproduced" if not any(codes) else f"exit codes {codes}"
    print(f"# {what}; median of {repeat} runs each; rerun verdicts: {verdicts}")
    print_rows([check("pyx rerun + compare, wall time", p, b, "s", "papermill run, same kernel",
                      f"ratio <= {TARGET}", lambda x, y: x <= TARGET * y)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
