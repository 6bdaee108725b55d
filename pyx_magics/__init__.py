"""pyx: evidence-first incident investigation for Jupyter.

``%load_ext pyx_magics`` registers the magics; everything heavy is imported lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    from pyx_magics.magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from pyx_magics.magics import unload

    unload(ipython)
