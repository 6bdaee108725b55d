"""The pyx kernelspec, layered like ipykernel's: argv → kernel.json dict → directory → install.

The kernel is plain ipykernel; pyx comes in through ``--ext kernel_ext`` in its argv.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

KERNEL_NAME = "pyx"
DISPLAY_NAME = "Python 3 (pyx)"
EXTENSION = "kernel_ext"
LOGOS = ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg")


def make_argv(executable: str | None = None) -> list[str]:
    """The command Jupyter runs to start the kernel (``{connection_file}`` is filled in by the client)."""
    return [executable or sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--ext", EXTENSION]


def kernel_dict(executable: str | None = None, display_name: str = DISPLAY_NAME) -> dict[str, Any]:
    """The content of ``kernel.json``."""
    return {
        "argv": make_argv(executable),
        "display_name": display_name,
        "language": "python",
        "metadata": {"debugger": True},
    }


def write_kernel_spec(path: str | Path, spec: dict[str, Any] | None = None) -> Path:
    """Write ``kernel.json`` (and ipykernel's logos, when available) into directory ``path``."""
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    (target / "kernel.json").write_text(json.dumps(spec or kernel_dict(), indent=1) + "\n", "utf-8")
    try:
        import ipykernel

        resources = Path(ipykernel.__file__).parent / "resources"
        for logo in LOGOS:
            if (resources / logo).is_file():
                shutil.copyfile(resources / logo, target / logo)
    except (ImportError, OSError):
        pass  # logos are cosmetic
    return target


def install(name: str = KERNEL_NAME, *, user: bool = False, prefix: str | None = None,
            display_name: str = DISPLAY_NAME, manager: Any = None) -> str:
    """Install the kernelspec; returns the directory it was installed in.

    Neither ``user`` nor ``prefix``: the system-wide Jupyter directory (may need permissions).
    Raises ``PermissionError``/``OSError`` from the copy and ``ValueError`` for an invalid name.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = manager or KernelSpecManager()
    with tempfile.TemporaryDirectory(prefix="pyx-kernelspec-") as tmp:
        source = write_kernel_spec(Path(tmp) / name, kernel_dict(display_name=display_name))
        return str(ksm.install_kernel_spec(str(source), kernel_name=name, user=user, prefix=prefix))


def on_search_path(destination: str | Path) -> bool:
    """Whether Jupyter (with the current ``JUPYTER_PATH``) looks for kernels where ``destination`` is."""
    from jupyter_client.kernelspec import KernelSpecManager

    parent = Path(destination).resolve().parent
    return any(Path(d).resolve() == parent for d in KernelSpecManager().kernel_dirs)
