"""Seed the demo incident into PostgreSQL, Redis and Kafka (the local servers, never production)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from datetime import UTC, datetime, timedelta
from typing import Any

ORDER = 1042
TOPIC = "order-events"
GROUP = "cache-updater"
PARTITIONS = 3
LAGGING_PARTITION = 1
BASE = datetime(2026, 12, 3, 22, 0, tzinfo=UTC)

SQL = """
DROP TABLE IF EXISTS payments;
DROP TABLE IF EXISTS orders;
CREATE TABLE orders (
    id integer PRIMARY KEY,
    customer_id integer NOT NULL,
    status text NOT NULL,
    amount numeric(10, 2) NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE payments (
    id integer PRIMARY KEY,
    order_id integer NOT NULL REFERENCES orders(id),
    amount numeric(10, 2) NOT NULL,
    status text NOT NULL,
    captured_at timestamptz
);
"""


def orders() -> list[dict[str, Any]]:
    rows = []
    for i in range(1001, 1061):
        created = BASE + timedelta(minutes=3 * (i - 1001))
        status = "PAID" if i % 4 else "SHIPPED"
        rows.append({"id": i, "customer_id": 500 + i % 17, "status": status,
                     "amount": f"{(i * 37) % 900 + 12}.{i % 10}0", "created_at": created,
                     "updated_at": created + timedelta(minutes=2)})
    for r in rows:
        if r["id"] == ORDER:  # paid just before midnight Paris time: a day-boundary case too
            r["status"] = "PAID"
            r["created_at"] = datetime(2026, 12, 3, 22, 57, tzinfo=UTC)
            r["updated_at"] = datetime(2026, 12, 3, 22, 59, 30, tzinfo=UTC)
    return rows


def partition_of(order_id: int) -> int:
    return LAGGING_PARTITION if order_id == ORDER else order_id % PARTITIONS


def cache_value(row: dict[str, Any], *, stale: bool) -> dict[str, Any]:
    if stale:  # the old writer: version 1 layout, status from before the payment
        return {"v": 1, "id": row["id"], "state": "PENDING", "total": row["amount"]}
    return {"schema_version": 2, "id": row["id"], "status": row["status"], "amount": row["amount"],
            "updated_at": row["updated_at"].isoformat()}


def events(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for r in rows:
        out.append((partition_of(r["id"]), {"event_id": f"evt-{r['id']}-created", "type": "order.created",
                                            "order_id": r["id"], "at": r["created_at"].isoformat()}))
        out.append((partition_of(r["id"]), {"event_id": f"evt-{r['id']}-paid", "type": "order.paid",
                                            "order_id": r["id"], "at": r["updated_at"].isoformat()}))
    # the payment service retried: the same order.paid event for 1042 was produced twice
    out.append((LAGGING_PARTITION, {"event_id": f"evt-{ORDER}-paid", "type": "order.paid", "order_id": ORDER,
                                    "at": datetime(2026, 12, 3, 22, 59, 31, tzinfo=UTC).isoformat()}))
    return out


def seed_postgres(url: str) -> int:
    import psycopg

    rows = orders()
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute(SQL)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO orders VALUES (%(id)s, %(customer_id)s, %(status)s, %(amount)s, %(created_at)s,"
                " %(updated_at)s)", rows)
            cur.executemany(
                "INSERT INTO payments VALUES (%s, %s, %s, 'CAPTURED', %s)",
                [(9000 + r["id"], r["id"], r["amount"], r["updated_at"]) for r in rows])
        conn.commit()
    return len(rows)


def seed_redis(url: str) -> int:
    import redis

    rows = orders()
    with redis.Redis.from_url(url) as r:
        pipe = r.pipeline()
        for row in rows:
            stale = row["id"] == ORDER
            pipe.set(f"order:{row['id']}", json.dumps(cache_value(row, stale=stale)), ex=86400 if not stale else None)
            pipe.hset(f"customer:{row['customer_id']}:profile", mapping={"schema_version": "2", "tier": "gold"})
        for i in range(200):
            pipe.set(f"session:{i:04d}", "x", ex=1800)
        pipe.execute()
    return len(rows)


async def _seed_kafka(brokers: str) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.structs import OffsetAndMetadata

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        if TOPIC in await admin.list_topics():
            await admin.delete_topics([TOPIC])
            await asyncio.sleep(0.2)
        await admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers)
    await producer.start()
    ends = {p: 0 for p in range(PARTITIONS)}
    paid_1042 = None
    try:
        for partition, ev in events(orders()):
            ts = int(datetime.fromisoformat(ev["at"]).timestamp() * 1000)
            meta = await producer.send_and_wait(TOPIC, json.dumps(ev).encode(), key=str(ev["order_id"]).encode(),
                                                partition=partition, timestamp_ms=ts)
            ends[partition] = meta.offset + 1
            if ev["order_id"] == ORDER and ev["type"] == "order.paid" and paid_1042 is None:
                paid_1042 = meta.offset
    finally:
        await producer.stop()
    # the cache-updater committed everything except the tail of partition 1 (from 1042's paid event on)
    committed = dict(ends)
    committed[LAGGING_PARTITION] = paid_1042 if paid_1042 is not None else ends[LAGGING_PARTITION]
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=GROUP, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.commit({tp: OffsetAndMetadata(committed[tp.partition], "") for tp in tps})
    finally:
        await consumer.stop()
    return {"end_offsets": ends, "committed": committed}


def seed_kafka(brokers: str) -> dict[str, Any]:
    # a private loop on a worker thread: inside a kernel an event loop is already running
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _seed_kafka(brokers)).result()


def seed_all(env: dict[str, str]) -> dict[str, Any]:
    """Seed every system named in ``env`` (the contract variables of the local servers)."""
    return {"orders": seed_postgres(env["DATABASE_URL"]), "cache_keys": seed_redis(env["REDIS_URL"]),
            "kafka": seed_kafka(env["KAFKA_BROKERS"])}
