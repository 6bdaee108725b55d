"""Load and hardening numbers (issue 8): concurrent runs, session start in a big directory,
a task printing hundreds of MB, an oversized input.

Rows (baselines run side by side on this machine):
- N processes x M runs of one task and topic (in-process executor): wall time, baseline the same
  task body run as plain ``exec`` in as many processes; every manifest must verify and every
  history line parse.
- ``Session.start`` in a directory of K manifests whose ``.running`` list was never compacted,
  with one killed run to mark: baseline ``Session.start`` in an empty directory; target < 50 ms.
- A ``%%pyx_run`` cell printing S MB of 100-byte lines in an InteractiveShell subprocess: time and
  peak RSS (``ru_maxrss``); baseline the same loop run by ``exec``, stdout to a file; targets:
  complete log, truncated cell output, RSS < 300 MB.
- ``pyx run --input-path`` of a 50 MB JSON file: time until refused, baseline ``json.loads`` of it.

Usage: python benchmarks/load.py [--procs 4] [--runs 250] [--manifests 5000] [--stdout-mb 200]
       [--input-mb 50]   (defaults also from PYX_BENCH_PROCS, _RUNS, _MANIFESTS, _STDOUT_MB, _INPUT_MB)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import Row, check, print_rows  # noqa: E402

SOURCE = "print('hello', pyx.run_id)\npyx.save('result', {'run': pyx.run_id})"
PLAIN = "print('hello', 'run')\nresult = {'run': 'run'}"


def worker(root: str, runs: int, plain: bool) -> None:
    """One load process: ``runs`` runs of the same task and topic (or plain exec for the baseline)."""
    from pyx_magics.execute import in_process
    from pyx_magics.runner import Session, TaskRequest, run_task

    sink = io.StringIO()
    if plain:
        code = compile(PLAIN, "<plain>", "exec")
        with contextlib.redirect_stdout(sink):
            for _ in range(runs):
                exec(code, {})
        return
    session = Session.start(root, "load")
    for _ in range(runs):
        _, m = run_task(session, TaskRequest("same_task", SOURCE), in_process(SOURCE, {}, live_out=sink))
        assert m["status"] == "succeeded", m["error"]
        sink.seek(0)
        sink.truncate()


def spawn(root: Path, procs: int, runs: int, plain: bool) -> float:
    t = time.perf_counter()
    cmd = [sys.executable, __file__, "--worker", str(root), str(runs)] + (["--plain"] if plain else [])
    children = [subprocess.Popen(cmd) for _ in range(procs)]
    codes = [c.wait() for c in children]
    if any(codes):
        raise SystemExit(f"a load worker failed: exit codes {codes}")
    return time.perf_counter() - t


def load(procs: int, runs: int) -> list[Row]:
    from pyx_magics.core import manifest

    with tempfile.TemporaryDirectory(prefix="pyx-load-") as tmp:
        root = Path(tmp) / "inv"
        base = spawn(Path(tmp) / "plain", procs, runs, plain=True)
        took = spawn(root, procs, runs, plain=False)
        report = manifest.verify([root])
        clean = report.checked if report.ok and not report.problems else report.checked - len(report.problems)
        ids = {manifest.read(p)["run_id"] for p in root.glob("same_task.*.manifest.json")}
        parsed = 0
        for line in (root / ".history.jsonl").read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                parsed += isinstance(json.loads(line), dict)
    total = procs * runs
    return [
        check(f"load: {procs}x{runs} runs, wall time", took, base, "s", "plain exec, same processes",
              "< 60 s", lambda p, b: p < 60),
        check("load: distinct manifests that verify", min(clean, len(ids)), total, "", "runs started",
              f"= {total}", lambda p, b: p == b),
        check("load: parseable history lines", parsed, total, "", "runs started", f"= {total}",
              lambda p, b: p == b),
    ]


def session_start(count: int) -> list[Row]:
    from pyx_magics.core import manifest
    from pyx_magics.runner import Session

    def timed(root: Path) -> list[float]:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            Session.start(root, "crash")
            times.append((time.perf_counter() - t) * 1000)
        return times

    with tempfile.TemporaryDirectory(prefix="pyx-start-") as tmp:
        root, empty = Path(tmp) / "big", Path(tmp) / "empty"
        root.mkdir()
        code = ("import os\nfrom pyx_magics.runner import Session, TaskRequest, open_run\n"
                f"s = Session.start({str(root)!r}, 'crash')\nopen_run(s, TaskRequest('stale', 'print(1)'))\n"
                "os._exit(9)\n")
        subprocess.run([sys.executable, "-c", code], check=False)  # a killed run, left `running`
        sample = next(root.glob("stale.*.manifest.json")).read_bytes()
        lines = []
        for i in range(count):
            name = f"bulk.20260101T000000{i % 1000:03d}Z-{i:06x}.manifest.json"
            (root / name).write_bytes(sample)
            lines.append(f"+{name}\n-{name}\n")
        with open(root / manifest.RUNNING, "a") as f:
            f.write("".join(lines))
        times = timed(root)
        marked = manifest.read(next(root.glob("stale.*.manifest.json")))["status"] == "interrupted"
        base = timed(empty)
    return [
        check(f"Session.start, {count} manifests, first (marks)", times[0], statistics.median(base), "ms",
              "Session.start, empty dir", "< 50 ms, run marked", lambda p, b: p < 50 and marked),
        check(f"Session.start, {count} manifests, median", statistics.median(times[1:]), statistics.median(base),
              "ms", "Session.start, empty dir", "< 50 ms", lambda p, b: p < 50),
    ]


BIG_STDOUT = """
import contextlib, resource, sys, time
mb, root, plain = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "plain"
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "pyx_magics")
ip.run_line_magic("pyx_topic", f"big --dir {root}")
n = (mb << 20) // 100
loop = f"for i in range({n}):\\n    print('%099d' % i)\\n"
t = time.perf_counter()
if plain:
    with open(f"{root}/plain.txt", "w") as f, contextlib.redirect_stdout(f):
        exec(loop, {})  # not ip.run_cell: IPython itself keeps ~180 bytes per loop iteration of a cell
    ok = True
else:
    ok = ip.run_cell("%%pyx_run loud\\n" + loop).success
took = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
sys.stderr.write(f"RESULT {ok} {took:.3f} {rss:.1f}\\n")
"""


def big_stdout(mb: int) -> list[Row]:
    from pyx_magics.core import manifest

    def one(root: Path, mode: str) -> tuple[bool, float, float, int]:
        root.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-c", BIG_STDOUT, str(mb), str(root), mode], capture_output=True,
                           text=True, check=False)
        ok, took, rss = r.stderr.rsplit("RESULT ", 1)[1].split()
        return ok == "True", float(took), float(rss), len(r.stdout)

    with tempfile.TemporaryDirectory(prefix="pyx-stdout-") as tmp:
        ok, took, rss, shown = one(Path(tmp) / "pyx", "pyx")
        _, base_took, base_rss, _ = one(Path(tmp) / "plain", "plain")
        (m,) = [manifest.read(p) for p in (Path(tmp) / "pyx").glob("loud.*.manifest.json")]
        complete = ok and m["log"]["bytes"] == ((mb << 20) // 100) * 100 and manifest.verify([Path(tmp) / "pyx"]).ok
        truncated = m["log"]["truncated"] and shown < 1_100_000
    return [
        check(f"{mb} MB of print lines in %%pyx_run, time", took, base_took, "s", "same loop via exec, stdout to a file",
              "log complete", lambda p, b: complete),
        check(f"{mb} MB of print lines, throughput", mb / took, mb / base_took, "MB/s", "same loop via exec, stdout to a file",
              "(report)", lambda p, b: True),
        check(f"{mb} MB of print lines, peak RSS", rss, base_rss, "MB", "same loop via exec, stdout to a file",
              "< 300 MB, cell truncated", lambda p, b: p < 300 and truncated),
    ]


def big_input(mb: int) -> list[Row]:
    from pyx_magics import cli

    with tempfile.TemporaryDirectory(prefix="pyx-input-") as tmp:
        path = Path(tmp) / "big.json"
        per_row = len(json.dumps({"id": 10**6, "status": "PAID", "note": "x" * 40})) + 2
        rows = [{"id": i, "status": "PAID", "note": "x" * 40} for i in range(mb * 10**6 // per_row)]
        path.write_text(json.dumps({"rows": rows}))
        (Path(tmp) / "s.py").write_text("print('must not run')\n")
        t = time.perf_counter()
        json.loads(path.read_text())
        base = time.perf_counter() - t
        err = io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["run", "--file", str(Path(tmp) / "s.py"), "--input-path", str(path),
                             "--dir", str(Path(tmp) / "inv")])
        took = time.perf_counter() - t
        refused = code == 2 and "MiB an input may hold" in err.getvalue() and not (Path(tmp) / "inv").exists()
        size = path.stat().st_size
    return [check(f"{size / 1e6:.0f} MB --input-path, time to refuse", took, base, "s",
                  "json.loads of the file", "exit 2, size message", lambda p, b: refused)]


def main() -> None:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=int(env("PYX_BENCH_PROCS", "4")))
    ap.add_argument("--runs", type=int, default=int(env("PYX_BENCH_RUNS", "250")))
    ap.add_argument("--manifests", type=int, default=int(env("PYX_BENCH_MANIFESTS", "5000")))
    ap.add_argument("--stdout-mb", type=int, default=int(env("PYX_BENCH_STDOUT_MB", "200")))
    ap.add_argument("--input-mb", type=int, default=int(env("PYX_BENCH_INPUT_MB", "50")))
    ap.add_argument("--worker", nargs=2, metavar=("DIR", "RUNS"), help=argparse.SUPPRESS)
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.plain)
        return
    rows = load(args.procs, args.runs) + session_start(args.manifests) + big_stdout(args.stdout_mb)
    rows += big_input(args.input_mb)
    print_rows(rows)


if __name__ == "__main__":
    main()
