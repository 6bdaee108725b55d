"""Benchmark: ``pyx.kafka().offsets(topic, group)`` on a 64-partition topic (target < 1 s).

Baseline: the same facts with raw aiokafka on already-started clients (admin OffsetFetch with
explicit partitions, consumer ``end_offsets``, DescribeGroups). Both are timed on open sessions;
pyx's extra work is the evidence file, the CLI-style table and the manifest records.

    .venv/bin/python benchmarks/datalayer_kafka.py [--partitions 64] [--messages 20] [--repeat 7]

Env overrides: PYX_BENCH_KAFKA_PARTITIONS, PYX_BENCH_KAFKA_MESSAGES (per partition), PYX_BENCH_REPEAT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pyx_magics.datalayer.kafka import connect
from pyx_magics.runner import Session, TaskRequest, open_run
from pyx_magics.services import LocalServices

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import check, print_rows  # noqa: E402

TARGET_S = 1.0


async def seed(brokers: str, topic: str, group: str, partitions: int, per_partition: int) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, partitions, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers)
    await producer.start()
    for i in range(per_partition):
        for p in range(partitions):
            await producer.send_and_wait(topic, f'{{"n": {i}}}'.encode(), key=f"k{i}".encode(), partition=p)
    await producer.stop()
    committer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=group, enable_auto_commit=False)
    await committer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    committer.assign(tps)
    await committer.commit({tp: per_partition // 2 for tp in tps[: partitions - 1]})  # one partition uncommitted
    await committer.stop()


async def baseline(brokers: str, topic: str, group: str, repeat: int) -> tuple[list[float], int]:
    """Raw aiokafka: partitions from metadata, committed offsets, end offsets, group description."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False)
    await asyncio.gather(admin.start(), consumer.start())
    times, lag = [], 0
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            [meta] = await admin.describe_topics([topic])
            tps = [TopicPartition(topic, p["partition"]) for p in meta["partitions"]]
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            ends = await consumer.end_offsets(tps)
            await admin.describe_consumer_groups([group])
            lag = sum(ends[tp] - committed[tp].offset for tp in tps if committed[tp].offset >= 0)
            times.append(time.perf_counter() - t0)
    finally:
        await consumer.stop()
        await admin.close()
    return times, lag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=int(os.environ.get("PYX_BENCH_KAFKA_PARTITIONS", 64)))
    parser.add_argument("--messages", type=int, default=int(os.environ.get("PYX_BENCH_KAFKA_MESSAGES", 20)),
                        help="messages per partition")
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("PYX_BENCH_REPEAT", 7)))
    args = parser.parse_args()
    topic, group = "bench-orders", "bench-billing"
    with LocalServices(["kafka"]) as svc, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(svc.env())
        brokers = svc.env()["KAFKA_BROKERS"]
        asyncio.run(seed(brokers, topic, group, args.partitions, args.messages))
        run = open_run(Session.start(tmp, "bench", "local", resume=False), TaskRequest("bench_kafka", "pass"))
        t0 = time.perf_counter()
        session = connect(run)
        connect_s = time.perf_counter() - t0
        pyx_times: list[float] = []
        result: dict[str, Any] = {}
        try:
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                result = session.offsets(topic, group, label="bench")
                pyx_times.append(time.perf_counter() - t0)
        finally:
            session.close()
        base_times, base_lag = asyncio.run(baseline(brokers, topic, group, args.repeat))
    pyx_s, base_s = statistics.median(pyx_times), statistics.median(base_times)
    assert result["totals"]["lag"] == base_lag, (result["totals"]["lag"], base_lag)
    print(f"kafka offsets() median of {args.repeat}, {args.partitions} partitions, "
          f"{args.partitions * args.messages} messages (connect {connect_s * 1000:.1f} ms, not included); "
          f"lag {base_lag} on both sides")
    print_rows([
        check(f"kafka offsets+lag, {args.partitions} partitions (ms)", pyx_s * 1000, base_s * 1000, "ms",
              "raw aiokafka admin + end_offsets", f"pyx < {TARGET_S * 1000:.0f} ms",
              lambda p, b: p < TARGET_S * 1000),
    ])

if __name__ == "__main__":
    main()
