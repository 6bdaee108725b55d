"""Run every benchmark of the project, each in its own subprocess with a timeout, and print one table.

Each script reports its rows through ``_table.print_rows`` into a per-script ``PYX_BENCH_JSON`` file;
this collects them. A script that crashes, times out or reports no row becomes a ``FAILED`` row (its
log is kept and named), never a crash of this runner. Scripts run one after the other, never
concurrently, so they do not disturb each other's timings.

    .venv/bin/python benchmarks/run_all.py                 # the issues' sizes (several minutes)
    .venv/bin/python benchmarks/run_all.py --quick         # smaller sizes, same measurements
    .venv/bin/python benchmarks/run_all.py --only datalayer_redis --only export --json rows.jsonl

Exit code: 0 when every row met its target, 1 when a row missed, 2 when a benchmark failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_TIMEOUT = 1800.0
GRACE_S = 30.0  # after SIGINT, time for a script to stop its local servers before the group is killed


@dataclass(frozen=True)
class Bench:
    """One benchmark script: its arguments and environment at full and at quick size."""

    script: str
    issue: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    quick_env: dict[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT


BENCHES: tuple[Bench, ...] = (
    Bench("overhead", "2", quick=("--cells", "50", "--mb", "32"), timeout=600),
    Bench("kernel_overhead", "3", quick=("30", "2")),
    Bench("datalayer_postgres", "4", quick=("--rows", "100000", "--repeat", "2")),
    Bench("datalayer_redis", "4", quick_env={"PYX_BENCH_KEYS": "100000", "PYX_BENCH_REPEAT": "2"}),
    Bench("datalayer_kafka", "4", quick=("--messages", "2", "--repeat", "3"), timeout=900),
    Bench("rerun", "5", quick=("--repeat", "1")),
    Bench("export", "6", quick=("--cells", "100", "--repeat", "2"), timeout=1200),
    Bench("load", "8", quick=("--procs", "2", "--runs", "50", "--manifests", "1000", "--stdout-mb", "20")),
)


@dataclass
class Result:
    """A collected row (the ``_table.Row`` fields) or a failure; ``error`` set means failed."""

    bench: str
    issue: str
    metric: str
    pyx: float = math.nan
    baseline: float = math.nan
    unit: str = ""
    baseline_name: str = ""
    target: str = ""
    met: bool = False
    error: str | None = None

    @property
    def ratio(self) -> float:
        if self.error is not None or math.isnan(self.pyx) or math.isnan(self.baseline):
            return math.nan
        return self.pyx / self.baseline if self.baseline else math.inf

    @property
    def verdict(self) -> str:
        return "FAILED" if self.error is not None else ("yes" if self.met else "NO")

    def as_json(self) -> dict[str, Any]:
        return {"bench": self.bench, "issue": self.issue, "metric": self.metric, "pyx": self.pyx,
                "baseline": self.baseline, "unit": self.unit, "baseline_name": self.baseline_name,
                "target": self.target, "met": self.met, "ratio": self.ratio, "error": self.error}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Interrupt the script (so its ``LocalServices`` stop), then kill its process group if it lingers."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this runner created for the script, nothing else
        proc.wait()
    except ProcessLookupError:
        pass


def run_bench(bench: Bench, args: Sequence[str], extra_env: dict[str, str], timeout: float,
              log_dir: Path) -> tuple[list[Result], float]:
    """Run one script; its rows, or one failed row, and the wall seconds it took."""
    rows_file = log_dir / f"{bench.script}.rows.jsonl"
    log = log_dir / f"{bench.script}.log"
    rows_file.unlink(missing_ok=True)
    env = {**os.environ, **extra_env, "PYX_BENCH_JSON": str(rows_file), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, str(HERE / f"{bench.script}.py"), *args]
    t0 = time.perf_counter()
    error: str | None = None
    with log.open("wb") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=HERE.parent, start_new_session=True)
        try:
            code = proc.wait(timeout)
            if code:
                error = f"exit code {code}"
        except subprocess.TimeoutExpired:
            _stop(proc)
            error = f"timed out after {timeout:.0f} s"
        except BaseException:
            _stop(proc)
            raise
    took = time.perf_counter() - t0
    rows = read_rows(bench, rows_file)
    if rows and error and error.startswith("exit code") and not all(r.met for r in rows):
        return rows, took  # the script reported its rows, then signalled the miss through its exit code
    if error is None and not rows:
        error = "reported no rows"
    if error is not None:
        rows.append(Result(bench.script, bench.issue, f"{bench.script}: {error}", error=f"{error}; log {log}:\n"
                           + _tail(log)))
    return rows, took


def read_rows(bench: Bench, path: Path) -> list[Result]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            rows.append(Result(bench.script, bench.issue, d["metric"], float(d["pyx"]), float(d["baseline"]),
                               d["unit"], d["baseline_name"], d["target"], bool(d["met"])))
    return rows


_CLI_PASSWORD = re.compile(r"""(['"]?(?:-a|--pass|--password)['"]?,?\s+['"]?)[^\s'"]+""")


def _tail(path: Path, lines: int = 15) -> str:
    """The end of a log for the table, with URL/DSN passwords and ``-a PASS`` arguments masked."""
    from pyx_magics.core.redact import MASK, Redactor

    text = "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    return _CLI_PASSWORD.sub(lambda m: m.group(1) + MASK, Redactor.from_env().text(text))


def _num(x: float, unit: str) -> str:
    if math.isnan(x):
        return "-"
    text = f"{x:.1f}" if abs(x) >= 100 else f"{x:.3f}"
    return f"{text} {unit}".rstrip()


def print_table(rows: Iterable[Result], file: Any = None) -> None:
    """One table: issue, metric, pyx, baseline, ratio, target, met, baseline name."""
    rows = list(rows)
    cells = [(r.issue, r.metric, _num(r.pyx, r.unit), _num(r.baseline, r.unit),
              "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}", r.target, r.verdict, r.baseline_name)
             for r in rows]
    head = ("issue", "metric", "pyx", "baseline", "ratio", "target", "met", "baseline is")
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head) - 1)]
    right = {2, 3, 4}

    def line(c: Sequence[str]) -> str:
        parts = [c[i].rjust(w) if i in right else c[i].ljust(w) for i, w in enumerate(widths)]
        return "  ".join(parts + [c[-1]]).rstrip()

    print(line(head), file=file)
    print("-" * len(line(head)), file=file)
    for c in cells:
        print(line(c), file=file)
    for r in rows:
        if r.error is not None:
            print(f"\n{r.bench} FAILED: {r.error}", file=file)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"nproc": os.cpu_count(), "memory_gib": round(mem_gb, 1), "cpu": model or platform.processor(),
            "python": platform.python_version(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def run_many(benches: Sequence[Bench], *, quick: bool, args_for: Mapping[str, Sequence[str]] | None = None,
             env_for: Mapping[str, dict[str, str]] | None = None, timeout: float | None = None,
             log_dir: Path | None = None) -> list[Result]:
    """Run ``benches`` in order (``args_for``/``env_for`` override a script's size options)."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="pyx-bench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    for b in benches:
        args = (args_for or {}).get(b.script, b.quick if quick else b.full)
        env = (env_for or {}).get(b.script, b.quick_env if quick else {})
        print(f"[{time.strftime('%H:%M:%S')}] {b.script} {' '.join(args)} "
              f"{' '.join(f'{k}={v}' for k, v in env.items())}".rstrip(), file=sys.stderr, flush=True)
        rows, took = run_bench(b, args, env, timeout or b.timeout, log_dir)
        print(f"    {took:.0f} s, {len(rows)} row(s), {sum(r.error is not None for r in rows)} failed; "
              f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
        results += rows
    print(f"logs: {log_dir}", file=sys.stderr)
    return results


def exit_code(results: Sequence[Result]) -> int:
    if any(r.error is not None for r in results):
        return 2
    return 0 if all(r.met for r in results) else 1


def write_json(path: str, results: Sequence[Result], meta: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"machine": meta}) + "\n")
        for r in results:
            f.write(json.dumps(r.as_json()) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (minutes less; same measurements)")
    ap.add_argument("--only", action="append", choices=[b.script for b in BENCHES], help="run only this script")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per script (default: per script)")
    ap.add_argument("--json", help="write the machine facts and every row as JSON lines to this file")
    ap.add_argument("--log-dir", type=Path, help="keep each script's output here (default: a temp dir)")
    a = ap.parse_args(argv)
    benches = [b for b in BENCHES if not a.only or b.script in a.only]
    before = machine()
    t0 = time.perf_counter()
    results = run_many(benches, quick=a.quick, timeout=a.timeout, log_dir=a.log_dir)
    meta = {**before, "loadavg_end": [round(x, 2) for x in os.getloadavg()], "quick": a.quick,
            "wall_s": round(time.perf_counter() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    print(f"\n# {meta['nproc']} CPUs ({meta['cpu']}), {meta['memory_gib']} GiB, Python {meta['python']}; "
          f"load average {before['loadavg']} at start, {meta['loadavg_end']} at end; "
          f"{'quick' if a.quick else 'full'} sizes; {meta['wall_s']:.0f} s")
    print_table(results)
    if a.json:
        write_json(a.json, results, meta)
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
