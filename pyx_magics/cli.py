"""The ``pyx`` command. It only gathers arguments; the work happens in the modules it calls.

Exit codes: 0 success, 1 the job's own failure, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pyx_magics import __version__
from pyx_magics.core.errors import PyxError, UsageProblem


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageProblem(message)


def cmd_ensure_temp(args: argparse.Namespace) -> int:
    from pyx_magics.runner import ensure_dir

    print(ensure_dir(args.dir))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pyx_magics import cli_run

    return cli_run.main(args)


def cmd_verify(args: argparse.Namespace) -> int:
    from pyx_magics.core import manifest

    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        raise UsageProblem("no such file or directory: " + ", ".join(missing))
    report = manifest.verify(args.paths)
    for p in report.problems:
        print(f"{'ERROR' if p.fatal else 'note '} {p.manifest}: {p.message}")
    if report.checked == 0:
        raise UsageProblem("no manifests (*.manifest.json) found in " + ", ".join(args.paths))
    bad = len({p.manifest for p in report.problems if p.fatal})
    print(f"{report.checked} manifest(s) checked, {bad} with problems")
    return 0 if report.ok else 1


def cmd_info(args: argparse.Namespace) -> int:
    from pyx_magics.info import collect, render

    data = collect()
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else render(data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pyx", description="pyx: evidence-first incident investigation (MANIFEST_IO).")
    p.add_argument("--version", action="version", version=f"pyx {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    s = sub.add_parser("ensure-temp", help="create the investigation directory", description="Create the "
                       "investigation directory (default $PYX_DIR or ./temp) and print its path.")
    s.add_argument("--dir", default=None, help="directory (default: $PYX_DIR or ./temp)")
    s.set_defaults(func=cmd_ensure_temp)

    s = sub.add_parser("run", help="run a script as a recorded task", description="Run a Python script as a "
                       "pyx task: writes <task>.py, <task>.input.json, the manifest, the log and the outputs. "
                       "The script sees PYX_INPUT_PATH, PYX_OUTPUT_DIR, PYX_OUTPUT_PATH (manifest), PYX_LOG_PATH, "
                       "PYX_RUN_ID and a `pyx` task context.")
    s.add_argument("--file", help="the Python script to run")
    s.add_argument("--input-path", default=None, metavar="JSON", help="input JSON file")
    s.add_argument("--task", default=None, help="task name (default: the script's file name)")
    s.add_argument("--timeout", type=float, default=None, metavar="S", help="stop the script after S seconds")
    s.add_argument("--dir", default=None, help="investigation directory (default: $PYX_DIR or ./temp)")
    s.add_argument("--topic", default=None, help="investigation topic (default: $PYX_TOPIC or 'investigation')")
    s.add_argument("--env", default=None, help="declared environment label (default: $PYX_ENV or 'local')")
    s.add_argument("--allow-write", default=None, metavar="REASON", help="allow writes to data systems; recorded")
    s.add_argument("--replay", default=None, metavar="MANIFEST", help="re-run a recorded task and compare outputs")
    s.add_argument("args", nargs="*", help="arguments for the script (after --)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("verify", help="re-hash manifests and their artifacts", description="Re-hash every "
                       "artifact of the given manifests (or directories of manifests). Exit 0 when all are "
                       "intact, 1 otherwise, naming each missing or changed file.")
    s.add_argument("paths", nargs="+", metavar="PATH", help="manifest files or directories")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("info", help="environment and configured endpoints", description="Show the pyx "
                       "version, the investigation directory, env var names (values hidden) and endpoints.")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    for register in _extra_commands():
        register(sub)
    return p


COMMAND_MODULES = ("pyx_magics.services_cli", "kernel_ext.cli", "pyx_magics.datalayer.cli",
                   "pyx_magics.rerun_cli", "pyx_magics.report.cli", "pyx_magics.demo.cli")


def _extra_commands() -> list[Callable[[Any], None]]:
    """``register`` of the modules that own the other subcommands (each imports its heavy parts lazily)."""
    return [importlib.import_module(name).register for name in COMMAND_MODULES]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        code = int(args.func(args))
    except PyxError as exc:
        print(f"pyx: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pyx: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(1)
    return code


if __name__ == "__main__":
    sys.exit(main())


