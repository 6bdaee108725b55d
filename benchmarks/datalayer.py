"""The three data-layer benchmarks of issue 4, one after the other, in one table.

- PostgreSQL: ``pyx.db().to_csv`` of N rows vs ``psql \\copy`` (throughput >= 0.7x; peak RSS <= 200 MB)
- Redis: ``keyspace_summary()`` of K keys vs ``valkey-cli --scan`` (<= 2x)
- Kafka: ``offsets()`` + lag of a P-partition topic (< 1 s)

Each runs in its own subprocess with its own local server (``datalayer_postgres.py``,
``datalayer_redis.py``, ``datalayer_kafka.py``; their docstrings say exactly what is timed).

    .venv/bin/python benchmarks/datalayer.py                       # 1,000,000 rows / keys, 64 partitions
    .venv/bin/python benchmarks/datalayer.py --quick               # 100,000 rows / keys
    .venv/bin/python benchmarks/datalayer.py --rows 200000 --keys 200000 --partitions 64 --repeat 2

Sizes also from PYX_BENCH_ROWS, PYX_BENCH_KEYS, PYX_BENCH_KAFKA_PARTITIONS, PYX_BENCH_KAFKA_MESSAGES,
PYX_BENCH_REPEAT. With ``PYX_BENCH_JSON`` set, every row is appended to it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import BENCHES, exit_code, machine, print_table, run_many  # noqa: E402

QUICK = {"rows": 100_000, "keys": 100_000, "partitions": 64, "messages": 2}


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=int(env("PYX_BENCH_ROWS", "1000000")), help="PostgreSQL rows")
    ap.add_argument("--keys", type=int, default=int(env("PYX_BENCH_KEYS", "1000000")), help="Redis keys")
    ap.add_argument("--partitions", type=int, default=int(env("PYX_BENCH_KAFKA_PARTITIONS", "64")))
    ap.add_argument("--messages", type=int, default=int(env("PYX_BENCH_KAFKA_MESSAGES", "20")),
                    help="Kafka messages per partition")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed runs per side (default: each script's own: 3 / 3 / 7)")
    ap.add_argument("--quick", action="store_true", help=f"smaller sizes: {QUICK}")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    a = ap.parse_args(argv)
    if a.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        for k, v in QUICK.items():
            if f"--{k}" not in given:
                setattr(a, k, v)
    repeat = ("--repeat", str(a.repeat)) if a.repeat else ()
    args_for = {
        "datalayer_postgres": ("--rows", str(a.rows), *repeat),
        "datalayer_redis": (),
        "datalayer_kafka": ("--partitions", str(a.partitions), "--messages", str(a.messages), *repeat),
    }
    env_for = {"datalayer_redis": {"PYX_BENCH_KEYS": str(a.keys),
                                   **({"PYX_BENCH_REPEAT": str(a.repeat)} if a.repeat else {})}}
    benches = [b for b in BENCHES if b.script in args_for]
    print(f"# {machine()}", file=sys.stderr)
    results = run_many(benches, quick=a.quick, args_for=args_for, env_for=env_for, timeout=a.timeout)
    print_table(results)
    out = env("PYX_BENCH_JSON")
    if out:
        with open(out, "a", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(r.as_json()) + "\n")
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
