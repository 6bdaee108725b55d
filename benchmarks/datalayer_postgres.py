"""PostgreSQL extraction: ``pyx.db().to_csv`` against ``psql \\copy`` on the same table, side by side.

Starts a local PostgreSQL (``LocalServices``), creates a table of ``PYX_BENCH_ROWS`` rows
(default 1,000,000: int, numeric(12,2), timestamptz, text, bool), then alternates, ``--repeat``
times each: ``psql -c "\\copy (select * from t) to FILE csv header"`` and a child process that
connects with pyx and runs ``to_csv('select * from t', ...)`` inside a real run. Both outputs
must be byte-identical. Times are wall clock per extraction (psql: the whole process, including
its start and connect; pyx: connect + fingerprint + COPY inside the child). Peak RSS is the
child's ``ru_maxrss`` from ``wait4`` (each process measured alone).

Targets: throughput >= 0.7x psql; pyx peak RSS <= 200 MB.
If ``psql`` is not installed, raw psycopg COPY in a child is the baseline (and says so).

Usage: python benchmarks/datalayer_postgres.py [--rows N] [--repeat R]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import check, print_rows  # noqa: E402

QUERY = "select * from t"


class _NoRedaction:
    """Diagnostic only: what the extraction costs without the redaction pass."""

    def bytes(self, b: bytes) -> bytes:
        return b

    def text(self, s: str) -> str:
        return s

    def json(self, obj: object) -> object:
        return obj


def child_pyx(out_dir: str, redact: bool = True) -> None:
    """In a child: one pyx run that extracts ``QUERY``; prints JSON {seconds, path, rows}."""
    from pyx_magics.datalayer.postgres import connect
    from pyx_magics.runner import Session, TaskRequest, open_run

    session = Session.start(out_dir, "bench", "local", resume=False)
    run = open_run(session, TaskRequest("extract", "pyx.db().to_csv(...)"))
    if not redact:
        run.redactor = _NoRedaction()  # type: ignore[assignment]
    t0 = time.perf_counter()
    with connect(run) as db:
        path = db.to_csv(QUERY, "t")
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "path": str(path), "rows": run.data_access[-1]["rows"]}))


def child_psycopg(url: str, out: str) -> None:
    """In a child: raw psycopg COPY to ``out`` (the baseline when psql is missing)."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(url) as conn, open(out, "wb") as f, conn.cursor().copy(
            f"COPY ({QUERY}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
        for block in copy:
            f.write(block)
    print(json.dumps({"seconds": time.perf_counter() - t0, "path": out}))


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of one child process, reaped with wait4 so the rusage is its own."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out.decode()


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=int(os.environ.get("PYX_BENCH_ROWS", "1000000")))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", choices=["pyx", "pyx-noredact", "psycopg"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child in ("pyx", "pyx-noredact"):
        return child_pyx(args.out, redact=args.child == "pyx")
    if args.child == "psycopg":
        return child_psycopg(os.environ["DATABASE_URL"], args.out)

    import psycopg

    from pyx_magics.services import LocalServices

    psql = shutil.which("psql")
    work = Path(tempfile.mkdtemp(prefix="pyx-bench-pg-"))
    with LocalServices(["postgres"]) as svc:
        env = {**os.environ, **svc.env()}
        env.pop("PYX_DIR", None)
        url = env["DATABASE_URL"]
        t0 = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE t AS SELECT g AS id, (g * 1.37)::numeric(12,2) AS amount,"
                " timestamptz '2024-01-01 00:00+00' + g * interval '1 second' AS ts,"
                " md5(g::text) AS note, g %% 7 = 0 AS flag FROM generate_series(1, %s) AS g", (args.rows,))
            conn.execute("VACUUM ANALYZE t")
        print(f"table t: {args.rows:,} rows created in {time.perf_counter() - t0:.1f} s; psql: {psql or 'missing'}")

        pg = svc.services["postgres"]
        psql_env = {**env, "PGPASSWORD": svc.passwords["postgres"]}
        pyx_times, pyx_rss, base_times, base_rss, bare_times = [], [], [], [], []
        pyx_path = base_path = None
        for i in range(args.repeat):
            base_out = work / f"baseline{i}.csv"
            if psql:
                argv = [psql, "-X", "-q", "-h", pg.host, "-p", str(pg.port), "-U", "postgres", "-d", "pyx",
                        "-c", f"\\copy ({QUERY}) to '{base_out}' csv header"]
                wall, rss, _ = run_child(argv, psql_env)
                base_times.append(wall)
            else:
                _, rss, out = run_child([sys.executable, __file__, "--child", "psycopg", "--out", str(base_out)], env)
                base_times.append(json.loads(out)["seconds"])
            base_rss.append(rss)
            base_path = base_out
            pyx_dir = work / f"pyx{i}"
            _, rss, out = run_child([sys.executable, __file__, "--child", "pyx", "--out", str(pyx_dir)], env)
            result = json.loads(out.strip().splitlines()[-1])
            pyx_times.append(result["seconds"])
            pyx_rss.append(rss)
            pyx_path = Path(result["path"])
            if result["rows"] != args.rows:
                raise SystemExit(f"pyx recorded {result['rows']} rows, expected {args.rows}")
            _, _, out = run_child([sys.executable, __file__, "--child", "pyx-noredact", "--out", str(pyx_dir)], env)
            bare_times.append(json.loads(out.strip().splitlines()[-1])["seconds"])
        assert pyx_path is not None and base_path is not None
        identical = sha(pyx_path) == sha(base_path)
        size_mb = pyx_path.stat().st_size / 1e6

    shutil.rmtree(work, ignore_errors=True)
    base_name = "psql \\copy" if psql else "raw psycopg COPY (psql missing)"
    pyx_t, base_t = statistics.median(pyx_times), statistics.median(base_times)
    print(f"median of {args.repeat}: pyx {pyx_t:.3f} s, {base_name} {base_t:.3f} s; CSV {size_mb:.1f} MB; "
          f"byte-identical: {identical}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"diagnostic: pyx without the redaction pass {statistics.median(bare_times):.3f} s "
          f"(redaction costs {pyx_t - statistics.median(bare_times):+.3f} s)")
    rows = [
        check("COPY throughput (M rows/s)", args.rows / pyx_t / 1e6, args.rows / base_t / 1e6, "", base_name,
              ">= 0.7x baseline", lambda p, b: p >= 0.7 * b),
        check("peak RSS of the extraction (MB)", max(pyx_rss), max(base_rss), "MB", base_name, "pyx <= 200 MB",
              lambda p, b: p <= 200),
        check("output byte-identical (1 = yes)", float(identical), 1.0, "", base_name, "== 1",
              lambda p, b: p == 1),
    ]
    print_rows(rows)


if __name__ == "__main__":
    main()
