"""``pyx demo``: the demo incident end to end on local servers.

start servers → seed the incident → run the notebook through papermill on the pyx kernel →
export inspect/summary/learn → rerun + compare → print where everything is → stop the servers.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyx_magics.core.errors import PyxError


@contextlib.contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    """Set env vars for the kernels papermill starts (they inherit ours), restoring them afterwards."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def step(text: str) -> float:
    print(f"[pyx demo] {text}", file=sys.stderr, flush=True)
    return time.perf_counter()


def kernel_env(root: Path) -> dict[str, str]:
    """Install the pyx kernelspec into a prefix inside the demo folder and point Jupyter at it."""
    from kernel_ext.kernelspec import install

    prefix = root / ".jupyter-prefix"
    install(prefix=str(prefix))
    paths = [str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH", "")]
    return {"JUPYTER_PATH": os.pathsep.join(p for p in paths if p)}


def original_session(notebook: Path) -> str:
    """The session id the executed notebook's first task ran under (shown in its outputs)."""
    import re

    from pyx_magics.core.history import read_lines

    text = notebook.read_text("utf-8")
    run_ids = re.findall(r"\b(\d{8}T\d{9}Z-[0-9a-f]{6})\b", text)
    history = {h["run_id"]: h.get("session_id") for h in read_lines(notebook.parent / "temp" / ".history.jsonl")}
    return str(next((history[r] for r in run_ids if history.get(r)), "*"))


def leader_part(summary: Path) -> str:
    text = summary.read_text("utf-8")
    start = text.find("## Leader")
    return text[start:].strip() if start >= 0 else text.strip()


def run_demo(directory: str | os.PathLike[str], *, progress: bool = True) -> dict[str, Any]:
    """Run the whole demo in ``directory``; returns what was produced (paths and the compare verdict)."""
    import nbformat
    import papermill

    from pyx_magics import cli
    from pyx_magics.demo.notebooks import demo_notebook
    from pyx_magics.demo.seed import seed_all
    from pyx_magics.services import LocalServices

    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    evidence = root / "temp"
    t0 = step(f"starting local PostgreSQL, Redis and Kafka in {root}")
    with LocalServices(root=root) as svc:
        env = svc.env()
        step("seeding the incident: order 1042 PAID in the database, PENDING in the cache")
        seeded = seed_all(env)
        nb_in = root / "demo_incident.ipynb"
        nb_out = root / "demo_incident.out.ipynb"
        nbformat.write(demo_notebook(), nb_in)
        with environ({**env, **kernel_env(root), "PYX_DIR": str(evidence)}):
            step("running demo_incident.ipynb through papermill on the pyx kernel")
            papermill.execute_notebook(str(nb_in), str(nb_out), kernel_name="pyx", cwd=str(root),
                                       request_save_on_cell_execute=False, progress_bar=progress)
            step("exporting the investigation log, summary and learn packages")
            if cli.main(["export", str(nb_out), "--to", "all", "--dir", str(evidence)]) != 0:
                raise PyxError("export failed")
            step("re-running the notebook with papermill and comparing the evidence")
            verdict = cli.main(["rerun", str(nb_out), "--dir", str(evidence),
                                "--output", str(root / "demo_incident.rerun.ipynb")])
    session = original_session(nb_out)
    reports = sorted(evidence.glob(f"*.{session}.inspect.md")) + sorted(evidence.glob(f"*.{session}.summary.md"))
    summary = next(iter(sorted(evidence.glob(f"*.{session}.summary.md"))), None)
    result: dict[str, Any] = {"dir": str(root), "evidence": str(evidence), "seeded": seeded, "notebook": str(nb_out),
              "reports": [str(p) for p in reports], "learn": [str(p) for p in sorted(evidence.glob(f"*.{session}.learn"))],
              "compare": [str(p) for p in sorted(evidence.glob("*.compare.md"))],
              "reproduced": verdict == 0, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"\npyx demo finished in {result['seconds']} s; servers stopped.")
    print(f"  executed notebook : {nb_out}")
    for p in reports + [Path(p) for p in result["learn"] + result["compare"]]:
        print(f"  {p.name:<60} {p}")
    print(f"  rerun + compare   : {'REPRODUCED' if verdict == 0 else 'NOT reproduced (see compare.md)'}")
    if summary is not None:
        print("\n" + leader_part(summary))
    return result


def cmd_demo(args: Any) -> int:
    result = run_demo(args.dir, progress=not args.no_progress)
    return 0 if result["reproduced"] else 1


def register(sub: Any) -> None:
    s = sub.add_parser("demo", help="run the demo incident end to end on local servers",
                       description="Start local PostgreSQL/Redis/Kafka, seed the demo incident (order 1042 paid "
                       "but cached as PENDING), run notebooks/demo_incident.ipynb through papermill on the pyx "
                       "kernel, export the reports, re-run and compare, print where everything is, stop servers.")
    s.add_argument("--dir", default="pyx-demo", help="folder for the demo (default: ./pyx-demo)")
    s.add_argument("--no-progress", action="store_true", help="no papermill progress bar")
    s.set_defaults(func=cmd_demo)
