"""Registers ``pyx demo`` (kept apart so the CLI imports the demo only when it runs)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    from pyx_magics.demo.run import register as _register

    _register(sub)
