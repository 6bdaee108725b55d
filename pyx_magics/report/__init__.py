"""Reports read back from the evidence: the inspect log, the summary, learn packages and nbconvert exporters.

No papermill and no IPython are imported here (``jupyter nbconvert --help`` loads the exporters).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["export_notebook"]


def export_notebook(nb_path: str | os.PathLike[str], to: str = "all", out_dir: str | os.PathLike[str] | None = None,
                    *, directory: str | os.PathLike[str] | None = None, prefixes: Iterable[str] = ()) -> list[Path]:
    """Export a notebook's investigation (``inspect``, ``summary``, ``learn`` or ``all``); returns the files written.

    Imported lazily (nbconvert is slow to import). See :func:`pyx_magics.report.exporters.export_notebook`.
    """
    from pyx_magics.report.exporters import export_notebook as _export

    return _export(nb_path, to, out_dir, directory=directory, prefixes=prefixes)
