"""The pyx kernel extension: the pyx magics plus the cell journal hooks.

The pyx kernelspec starts ipykernel with ``--ext kernel_ext``; ``%load_ext kernel_ext`` does the same
in any IPython. Loading twice is harmless; unloading removes exactly what loading added.
"""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    from kernel_ext.hooks import register
    from pyx_magics.magics import load

    if getattr(ipython, "_pyx_kernel_hooks", None) is not None:
        return
    owns_magics = getattr(ipython, "_pyx_magics", None) is None  # not already loaded by %load_ext pyx_magics
    load(ipython)
    register(ipython, owns_magics=owns_magics)


def unload_ipython_extension(ipython: Any) -> None:
    from kernel_ext.hooks import unregister
    from pyx_magics.magics import unload

    journal = unregister(ipython)
    if journal is not None and journal.owns_magics:
        unload(ipython)
