"""``pyx kernel install``: registered into the ``pyx`` command by ``pyx_magics.cli``."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Any

from pyx_magics.core.errors import UsageProblem

USER_HINT = "use --user to install for your account only, or --sys-prefix for this Python environment"


def register(subparsers: Any) -> None:
    """Add ``kernel`` (with ``install``) to the ``pyx`` subcommands; the parser class is inherited."""
    kernel = subparsers.add_parser(
        "kernel", help="install the pyx Jupyter kernel",
        description="The pyx kernel: ipykernel started with the pyx magics and the cell journal loaded.")
    kernel.set_defaults(func=lambda args: _print_help(kernel))
    sub = kernel.add_subparsers(dest="kernel_command", metavar="SUBCOMMAND")
    s = sub.add_parser(
        "install", help="install the kernelspec",
        description="Install the 'pyx' kernelspec (display name 'Python 3 (pyx)'): ipykernel with "
                    "`--ext kernel_ext`, so %%pyx_run works without %load_ext and every cell is journaled. "
                    "Default location: the system-wide Jupyter directory.")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user (~/.local/share/jupyter)")
    where.add_argument("--sys-prefix", action="store_true",
                       help=f"install into this Python environment ({sys.prefix})")
    where.add_argument("--prefix", default=None, metavar="P", help="install into P/share/jupyter/kernels")
    s.add_argument("--name", default="pyx", help="kernelspec name (default: pyx)")
    s.add_argument("--display-name", default=None, help="name shown in Jupyter (default: 'Python 3 (pyx)')")
    s.set_defaults(func=cmd_install)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_install(args: argparse.Namespace) -> int:
    from kernel_ext import kernelspec

    prefix = sys.prefix if args.sys_prefix else args.prefix
    try:
        dest = kernelspec.install(args.name, user=args.user, prefix=prefix,
                                  display_name=args.display_name or kernelspec.DISPLAY_NAME)
    except ValueError as exc:  # jupyter_client: invalid kernel name
        raise UsageProblem(f"--name {args.name!r}: {exc}") from None
    except PermissionError as exc:
        raise UsageProblem(f"cannot install the kernelspec: permission denied ({_where(exc)})",
                           hint=USER_HINT) from None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise UsageProblem(f"cannot install the kernelspec: {reason} ({_where(exc)})",
                           hint="choose a writable --prefix, or " + USER_HINT) from None
    print(f"installed kernelspec {args.name!r} ({args.display_name or kernelspec.DISPLAY_NAME}) in {dest}")
    if not kernelspec.on_search_path(dest):
        data_dir = os.path.dirname(os.path.dirname(dest))
        print(f"note: Jupyter does not look in {os.path.dirname(dest)}; set JUPYTER_PATH={data_dir}")
    return 0


def _where(exc: OSError) -> str:
    return str(exc.filename) if exc.filename else "the target directory"
