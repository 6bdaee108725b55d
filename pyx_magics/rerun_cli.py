"""``pyx rerun`` and ``pyx compare``: argument gathering only; the work is in :mod:`pyx_magics.rerun`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pyx_magics.core.errors import UsageProblem


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """``-f`` file values, then ``-p NAME VALUE`` pairs (literals when they parse, else strings)."""
    from pyx_magics.rerun import load_params_file, parse_value

    params: dict[str, Any] = {}
    for path in args.params_file or []:
        params.update(load_params_file(path))
    for name, value in args.param or []:
        params[name] = parse_value(value)
    return params


def cmd_rerun(args: argparse.Namespace) -> int:
    from pyx_magics import rerun

    overrides = overrides_from(args)
    if args.batch:
        rows = rerun.load_batch(args.batch)
        results = rerun.run_batch(args.notebook, rows, overrides, directory=args.dir, output=args.output,
                                  cwd=args.cwd, timeout=args.timeout, workers=args.workers,
                                  executor=args.executor, scheduler=args.scheduler, kernel_name=args.kernel)
        print(rerun.summary_table(results))
        failed = sum(r.status != "succeeded" for r in results)
        print(f"{len(results) - failed} of {len(results)} job(s) succeeded")
        return 1 if failed else 0
    if args.executor != "pool" or args.scheduler or args.workers:
        raise UsageProblem("--executor, --scheduler and --workers apply to --batch runs only")
    outcome = rerun.rerun(args.notebook, overrides, directory=args.dir, output=args.output, cwd=args.cwd,
                          timeout=args.timeout, kernel_name=args.kernel,
                          warn=lambda msg: print(f"pyx: note: {msg}", file=sys.stderr))
    job = outcome.job
    print(f"re-run {job.status} in {job.duration_s:.1f} s: {job.output}" + (f" ({job.error})" if job.error else ""))
    print(f"A {outcome.original.session_id or '-'} ({outcome.original.how}) vs B {job.session_id}")
    rerun.print_result(outcome.result)
    print(outcome.json_path)
    print(outcome.md_path)
    return outcome.exit_code


def cmd_compare(args: argparse.Namespace) -> int:
    from pyx_magics import rerun

    root = Path(args.dir or os.environ.get("PYX_DIR") or "temp").resolve()
    a = rerun.resolve_side(args.a, root, "A")
    b = rerun.resolve_side(args.b, root, "B")
    result, json_path, md_path = rerun.compare_sides(a, b)
    print(f"A {a.session_id} ({a.how}) vs B {b.session_id} ({b.how})")
    rerun.print_result(result)
    print(json_path)
    print(md_path)
    return 0 if result["reproduced"] else 1


def register(sub: Any) -> None:
    """Add ``rerun`` and ``compare`` to the ``pyx`` command."""
    s = sub.add_parser(
        "rerun", help="re-run a notebook with papermill and compare with the original",
        description="Re-run NOTEBOOK with papermill on the pyx kernel, passing every parameter its last run used "
        "(metadata.papermill.parameters, else the parameters cell) plus overrides, under a new session; "
        "then compare the original session's tasks with the re-run's. Exit 0 reproduced, 1 otherwise, "
        "2 for a usage error (e.g. an unknown parameter name).")
    s.add_argument("notebook", metavar="NOTEBOOK")
    s.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="override a parameter; VALUE is a Python literal when it parses as one, else a string")
    s.add_argument("-f", "--params-file", action="append", metavar="PARAMS", help="parameters from a .yaml/.json file")
    s.add_argument("--output", default=None, metavar="PATH", help="output notebook (with --batch: a directory); "
                   "default <dir>/<topic>.<session_id>.rerun.ipynb")
    s.add_argument("--dir", default=None, help="investigation directory (default: $PYX_DIR, else temp/ in the kernel's working directory)")
    s.add_argument("--cwd", default=None, help="working directory of the kernel (default: the notebook's folder)")
    s.add_argument("--timeout", type=float, default=None, metavar="S", help="stop a cell after S seconds")
    s.add_argument("--kernel", default="pyx", help=argparse.SUPPRESS)
    s.add_argument("--batch", default=None, metavar="PARAMS", help="one job per row of a .csv or .jsonl file")
    s.add_argument("--workers", type=int, default=None, metavar="N", help="parallel jobs for --batch (pool)")
    s.add_argument("--executor", choices=("pool", "dask"), default="pool",
                   help="where --batch jobs run: a local process pool or a Dask cluster (pyx-magics[dask])")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address for --executor dask; workers need pyx, the pyx kernel and these paths")
    s.set_defaults(func=cmd_rerun)

    s = sub.add_parser(
        "compare", help="compare two sessions, notebooks or manifests",
        description="Compare A (original) with B (re-run), task by task (matched by name and order): reproduced, "
        "data_changed, logic_changed, missing, new or failed. Writes <topic>.<B session>.compare.json and .md. "
        "Exit 0 when every task reproduced, 1 otherwise.")
    s.add_argument("a", metavar="A", help="session id, notebook (.ipynb) or manifest (.manifest.json)")
    s.add_argument("b", metavar="B", help="session id, notebook (.ipynb) or manifest (.manifest.json)")
    s.add_argument("--dir", default=None, help="investigation directory (default: $PYX_DIR or ./temp)")
    s.set_defaults(func=cmd_compare)
