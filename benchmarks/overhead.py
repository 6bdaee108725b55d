"""Overhead of %%pyx_run on a trivial cell, and artifact-hashing throughput.

Baselines, run side by side in the same process:
- the same trivial cell without the magic in the same InteractiveShell (target: median added latency <= 5 ms)
- a raw hashlib sha256 loop over the same file (target: pyx hashing >= 0.9x its throughput)

Usage: python benchmarks/overhead.py [--cells N] [--mb M]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import check, print_rows  # noqa: E402


def cell_latency(cells: int) -> tuple[float, float]:
    from IPython.core.interactiveshell import InteractiveShell

    work = tempfile.mkdtemp(prefix="pyx-bench-")
    os.chdir(work)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "pyx_magics")
    ip.run_line_magic("pyx_topic", "bench --new")
    import contextlib
    import io

    plain, magic = [], []
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        for _ in range(20):  # warm up both paths
            ip.run_cell("x = 1 + 1")
            ip.run_cell("%%pyx_run trivial\nx = 1 + 1")
        for _ in range(cells):
            t = time.perf_counter()
            ip.run_cell("x = 1 + 1")
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            ip.run_cell("%%pyx_run trivial\nx = 1 + 1")
            magic.append(time.perf_counter() - t)
            sink.seek(0)
            sink.truncate()
    return statistics.median(magic) * 1000, statistics.median(plain) * 1000


def hashing(mb: int) -> tuple[float, float]:
    from pyx_magics.core.hashing import sha256_file

    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(os.urandom(mb << 20))
        path = f.name

    def raw() -> None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        h.hexdigest()

    pyx_t, raw_t = [], []
    for _ in range(5):
        t = time.perf_counter()
        sha256_file(path)
        pyx_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        raw()
        raw_t.append(time.perf_counter() - t)
    os.unlink(path)
    return mb / statistics.median(pyx_t), mb / statistics.median(raw_t)


def main() -> list:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=int(os.environ.get("PYX_BENCH_CELLS", 200)))
    ap.add_argument("--mb", type=int, default=int(os.environ.get("PYX_BENCH_MB", 256)))
    args = ap.parse_args()
    magic_ms, plain_ms = cell_latency(args.cells)
    pyx_mbs, raw_mbs = hashing(args.mb)
    rows = [
        check("%%pyx_run trivial cell, median latency", magic_ms, plain_ms, "ms", "same cell, no magic",
              "added <= 5 ms", lambda p, b: p - b <= 5.0),
        check("artifact hashing throughput (MB/s)", pyx_mbs, raw_mbs, "", "raw hashlib loop",
              ">= 0.9x", lambda p, b: p >= 0.9 * b),
    ]
    print(f"added latency: {magic_ms - plain_ms:.2f} ms per cell")
    print_rows(rows)
    return rows


if __name__ == "__main__":
    main()
