"""``pyx export`` and ``pyx learn``: argument gathering only (the work is in the report modules)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pyx_magics.core.errors import UsageProblem


def _show(paths: list[Path]) -> None:
    cwd = Path.cwd()
    for p in paths:
        try:
            print(os.path.relpath(p, cwd) if p.is_relative_to(cwd) else p)
        except ValueError:
            print(p)


def _report_leaks(leaks: list[Any]) -> int:
    for leak in leaks:
        print(f"LEAK {leak}", file=sys.stderr)
    print(f"pyx: {len(leaks)} project identifier(s) left in the global package; fix it before sharing",
          file=sys.stderr)
    return 1


def cmd_export(args: argparse.Namespace) -> int:
    from pyx_magics.report.exporters import export_investigation
    from pyx_magics.report.model import load_source

    inv = load_source(args.notebook, args.dir)
    written, leaks = export_investigation(inv, args.to, args.out, args.project_prefix or ())
    _show(written)
    return _report_leaks(leaks) if leaks else 0


def cmd_learn(args: argparse.Namespace) -> int:
    from pyx_magics.report import learn
    from pyx_magics.report.exporters import export_investigation
    from pyx_magics.report.model import load_source

    if args.check:
        leaks = learn.check_leaks(Path(args.check), args.project_prefix or ())
        if leaks:
            return _report_leaks(leaks)
        print(f"no project identifier in {learn.global_dir_of(Path(args.check))}")
        return 0
    if not args.source:
        raise UsageProblem("pyx learn needs a SOURCE (a notebook, an investigation directory or an inspect log)",
                           hint="or --check DIR to check a learn package")
    inv = load_source(args.source, args.dir)
    written, leaks = export_investigation(inv, "learn", args.out, args.project_prefix or ())
    _show(written)
    return _report_leaks(leaks) if leaks else 0


def register(sub: Any) -> None:
    s = sub.add_parser("export", help="write the inspect log, summary and learn packages of a notebook",
                       description="Export an investigation: <topic>.<session>.inspect.md, .summary.md, "
                       ".learn/{project,global}/ and .template.ipynb, in the investigation directory (or --out).")
    s.add_argument("notebook", metavar="NOTEBOOK", help="the investigation notebook (or its directory / inspect log)")
    s.add_argument("--to", choices=("inspect", "summary", "learn", "all"), default="all", help="what to write")
    s.add_argument("--dir", default=None, help="investigation directory (default: found from the notebook)")
    s.add_argument("--out", default=None, metavar="DIR", help="write the reports here (default: the investigation dir)")
    s.add_argument("--project-prefix", action="append", metavar="PREFIX",
                   help="project naming prefix to remove from the global learn package (repeatable)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("learn", help="turn an investigation into project + global skill packages",
                       description="Write <topic>.<session>.learn/project (concrete queries, catalog, facts, "
                       "placeholder mapping) and learn/global (de-projected playbook, templated queries), plus "
                       "<topic>.<session>.template.ipynb; then check the global package for project identifiers "
                       "(exit 1 when any is left). --check DIR only runs that check.")
    s.add_argument("source", nargs="?", metavar="SOURCE",
                   help="a notebook, an investigation directory or a <topic>.<session>.inspect.md")
    s.add_argument("--project-prefix", action="append", metavar="PREFIX",
                   help="project naming prefix (e.g. acme_) to replace by a placeholder (repeatable)")
    s.add_argument("--dir", default=None, help="investigation directory (default: found from SOURCE)")
    s.add_argument("--out", default=None, metavar="DIR", help="write here (default: the investigation directory)")
    s.add_argument("--check", default=None, metavar="DIR", help="only check a learn package for leaks")
    s.set_defaults(func=cmd_learn)
