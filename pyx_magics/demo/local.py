"""Local servers for a notebook with no tunnels (Binder, a laptop): start, export env vars, seed, stop at exit."""

from __future__ import annotations

import atexit
import os
from typing import Any

_running: Any = None


def start_demo_services(seed: bool = True) -> dict[str, str]:
    """Start PostgreSQL/Redis/Kafka on free loopback ports for this process, export the contract env vars
    into ``os.environ`` (the data layer reads them at connect time), seed the demo incident, and stop the
    servers when the process exits. Returns the env vars (passwords are local and random)."""
    global _running
    from pyx_magics.demo.seed import seed_all
    from pyx_magics.services import LocalServices

    if _running is None:
        _running = LocalServices().start()
        atexit.register(_running.stop)
        env = _running.env()
        os.environ.update(env)
        if seed:
            seed_all(env)
    return dict(_running.env())
