"""Refresh the README pictures: the executed demo notebook and the exported summary.

Usage: python docs/make_screenshots.py [DEMO_DIR]   (default: ./pyx-demo, as left by `pyx demo`)
Needs Debian's chromium (scripts/install_browser.sh). Renders to HTML with nbconvert, then takes a
headless screenshot with the background-networking flags this machine needs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def shoot(html: Path, png: Path, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["/usr/bin/chromium", *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
                        f"--window-size=1100,{height}", html.as_uri()], check=True, capture_output=True, timeout=60)


def summary_html(md: Path) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    body = markdown2html_mistune(md.read_text("utf-8"))
    style = ("body{font-family:system-ui,sans-serif;max-width:1040px;margin:24px;font-size:14px;line-height:1.45}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}code{background:#f3f3f3}")
    return f"<html><head><meta charset='utf-8'><style>{style}</style></head><body>{body}</body></html>"


def steps_only(nb_path: Path, dest: Path) -> Path:
    """The executed notebook from "Steps + evidence" through the cache step: what the picture is about."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    start = next(i for i, c in enumerate(nb.cells) if "Steps + evidence" in c.source)
    end = next(i for i, c in enumerate(nb.cells) if c.source.startswith("### 3."))
    nb.cells = nb.cells[start:end]
    nbformat.write(nb, dest)
    return dest


def main(demo: Path) -> None:
    from pyx_magics.demo.run import original_session

    nb = demo / "demo_incident.out.ipynb"
    (summary,) = (demo / "temp").glob(f"*.{original_session(nb)}.summary.md")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        part = steps_only(nb, out / "steps.ipynb")
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", str(part), "--output-dir", tmp,
                        "--output", "demo"], check=True, capture_output=True)
        shoot(out / "demo.html", DOCS / "img" / "demo_notebook.png", 1500)
        (out / "summary.html").write_text(summary_html(summary), "utf-8")
        shoot(out / "summary.html", DOCS / "img" / "demo_summary.png", 720)
    print(DOCS / "img" / "demo_notebook.png", DOCS / "img" / "demo_summary.png")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "pyx-demo"))
