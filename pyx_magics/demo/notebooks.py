"""Builders of the incident notebooks: the parameterized template and the demo incident.

``python -m pyx_magics.demo.notebooks`` rewrites ``notebooks/incident_template.ipynb`` and
``notebooks/demo_incident.ipynb`` from these builders (a test checks the checked-in copies match).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

TEMPLATE_PARAMETERS = {
    "topic": "incident",
    "environment_label": "local",
    "time_window_start": "2026-12-03T21:00:00+00:00",
    "time_window_end": "2026-12-04T01:00:00+00:00",
    "timezone": "Europe/Paris",
    "entity_ids": [1042],
    "notes": "",
    "db_table": "orders",
    "cache_key_pattern": "order:{id}",
    "kafka_topic": "order-events",
    "consumer_group": "cache-updater",
    "event_id_field": "event_id",
}


def _parameters_source(params: dict[str, Any]) -> str:
    lines = ["# Parameters (papermill injects overrides after this cell; `pyx rerun` passes every recorded one)"]
    lines += [f"{k} = {v!r}" for k, v in params.items()]
    return "\n".join(lines)


LOCAL_SERVICES_CELL = '''\
# No tunnels configured (Binder, a laptop)? Start local servers and seed the demo incident in this kernel.
# `pyx demo` and real investigations set DATABASE_URL etc. before the kernel starts, so this does nothing there.
import os
if not os.environ.get("DATABASE_URL"):
    from pyx_magics.demo.local import start_demo_services
    start_demo_services()'''

INPUT_CELL = '''\
# The input every task below shares: time window, entity ids, notes (validated before any task runs)
import json, pathlib
incident_input = {
    "time_window": {"start": time_window_start, "end": time_window_end, "timezone": timezone},
    "entity_ids": entity_ids,
    "notes": notes,
    "db_table": db_table, "cache_key_pattern": cache_key_pattern,
    "kafka_topic": kafka_topic, "consumer_group": consumer_group, "event_id_field": event_id_field,
}
pathlib.Path("incident.input.json").write_text(json.dumps(incident_input, indent=2))'''

DB_CELL = '''\
%%pyx_run db_rows --input incident.input.json
# Source of truth first: the canonical rows for the entities, with their payments
db = pyx.db()
orders = db.query_df(
    f"select o.id, o.status, o.amount, o.updated_at, p.status as payment_status, p.captured_at "
    f"from {pyx.input['db_table']} o left join payments p on p.order_id = o.id "
    f"where o.id = any(%s) order by o.id",
    [pyx.input["entity_ids"]], label="orders")
boundary = db.rows_near_day_boundary(pyx.input["db_table"], "updated_at", pyx.input["time_window"]["timezone"],
                                     window_minutes=5, label="day_boundary")
lag = db.replica_lag()
print(f"{len(orders)} order row(s); {len(boundary)} near a day boundary; replica: {lag}")
orders'''

CACHE_CELL = '''\
%%pyx_run cache_vs_db --input incident.input.json
# Then the cache: existence, TTL, serialization version, and an explicit diff against the database
r = pyx.redis()
cache = {}
for entity in pyx.input["entity_ids"]:
    key = pyx.input["cache_key_pattern"].format(id=entity)
    cache[entity] = r.inspect(key, label=f"entity_{entity}")
    value = cache[entity].get("value") or {}
    row = orders[orders["id"] == entity].iloc[0]
    cached_status = value.get("status", value.get("state")) if isinstance(value, dict) else None
    version = (cache[entity].get("version") or {}).get("value")
    pyx.diff(f"db_vs_cache_{entity}", {"status": str(row["status"]), "serialization_version": 2},
             {"status": cached_status, "serialization_version": version},
             left_name="database", right_name="cache")
    print(key, "exists", cache[entity]["exists"], "ttl", cache[entity]["ttl"], "version", version,
          "| database", row["status"], "| cache", cached_status)'''

KAFKA_LAG_CELL = '''\
%%pyx_run consumer_lag --input incident.input.json
# Then the async pipeline: did the cache updater consume the events? (read without joining the group)
k = pyx.kafka()
lag = k.offsets(pyx.input["kafka_topic"], pyx.input["consumer_group"], label=pyx.input["consumer_group"])
print(lag["table"])'''

KAFKA_EVENTS_CELL = '''\
%%pyx_run events --input incident.input.json
# Were the events produced, once each, inside the window?
k = pyx.kafka()
tw = pyx.input["time_window"]
counts = k.count_messages(pyx.input["kafka_topic"], tw["start"], tw["end"])
pyx.save("message_count_per_partition", counts)
for entity in pyx.input["entity_ids"]:
    found = k.find_messages(pyx.input["kafka_topic"], key=str(entity), start=tw["start"], end=tw["end"],
                            label=f"entity_{entity}")
    print(entity, [m["value"].get("type") if isinstance(m["value"], dict) else m["value"] for m in found])
dups = k.duplicates(pyx.input["kafka_topic"], pyx.input["event_id_field"], start=tw["start"], end=tw["end"],
                    label="event_ids")
print("duplicate ids:", [d.get("id") for d in dups.get("duplicates", [])])'''

DEMO_NOTES = [
    "%pyx_note problem Order 1042 shows PENDING in the app but the customer was charged",
    "%pyx_note expected A captured payment moves the order to PAID in the database and in the cache within seconds",
    "%pyx_note scope order 1042, 2026-12-03 21:00 to 2026-12-04 01:00 UTC (Europe/Paris day boundary inside)",
    "%pyx_note hypothesis The cache was not updated after payment: consumer lag or a failed cache write",
]

# one finding right after the step that proves it, so the reports link each claim to its evidence
DEMO_STEP_FINDINGS = {
    "db": "%pyx_note finding The database says PAID, with a CAPTURED payment at 22:59:30 UTC (23:59 in Paris)",
    "cache": "%pyx_note finding The cache still holds PENDING for order 1042, in serialization version 1, with no TTL",
    "lag": "%pyx_note finding The cache-updater group lags by 14 on partition 1 of order-events, from the order.paid event of 1042 on",
    "events": "%pyx_note finding The order.paid event of 1042 was produced twice with the same event_id",
}

DEMO_FINDINGS = [
    "%pyx_note root_cause The cache-updater consumer stalled on partition 1 (the v1 entry it could not upgrade), so the order.paid event for 1042 was never applied to the cache evidence=db_rows,cache_vs_db,consumer_lag",
    "%pyx_note fix Delete or rewrite cache key order:1042 from the database row and restart the cache-updater on partition 1 evidence=cache_vs_db,consumer_lag",
    "%pyx_note impact One order shown with a wrong status; 14 events on partition 1 not yet applied evidence=consumer_lag,events",
    "%pyx_note prevention Alert on consumer lag per partition, and make the cache updater idempotent on event_id evidence=consumer_lag,events",
    "%pyx_note action Add a per-partition lag alert for cache-updater owner=alice due=2026-12-11 evidence=consumer_lag",
    "%pyx_note action Deduplicate order.paid by event_id in the payment service owner=bob due=2026-12-18 evidence=events",
    "%pyx_note status mitigated: cache entry corrected, consumer restarted; prevention actions open evidence=cache_vs_db",
]


def build(params: dict[str, Any], *, demo: bool) -> nbformat.NotebookNode:
    md = new_markdown_cell
    cells = [
        md("# Incident investigation\n\nEvidence-first: every check below is a `%%pyx_run` task that leaves its "
           "code, input, manifest, log and outputs under `temp/`. Order: fingerprint → database (source of truth) "
           "→ cache → async pipeline."),
    ]
    p = new_code_cell(_parameters_source(params))
    p.metadata["tags"] = ["parameters"]
    cells.append(p)
    if demo:
        cells.append(new_code_cell(LOCAL_SERVICES_CELL))
    cells.append(new_code_cell("%pyx_topic {topic} --env {environment_label}"))
    for i, heading in enumerate(("Problem statement", "Expected behavior", "Scope", "Hypotheses")):
        cells.append(md(f"## {heading}"))
        if demo:
            cells.append(new_code_cell(DEMO_NOTES[i]))
    cells += [new_code_cell(INPUT_CELL)]
    cells += [md("## Steps + evidence\n\n### 0. Fingerprint: which systems did we reach?"),
              new_code_cell("%pyx_fingerprint")]
    steps: list[tuple[str | None, str, str]] = [
        ("### 1. Database", "db", DB_CELL), ("### 2. Cache", "cache", CACHE_CELL),
        ("### 3. Async pipeline", "lag", KAFKA_LAG_CELL), (None, "events", KAFKA_EVENTS_CELL)]
    for title, key, source in steps:
        if title:
            cells.append(md(title))
        cells.append(new_code_cell(source))
        if demo:
            cells.append(new_code_cell(DEMO_STEP_FINDINGS[key]))
    cells += [md("## Root cause"), md("## Mitigation / Fix"), md("## Prevention")]
    if demo:
        cells += [new_code_cell("\n".join(DEMO_FINDINGS))]
    else:
        cells += [new_code_cell("# Record what you found, e.g.\n# %pyx_note finding ...\n# %pyx_note root_cause ...\n"
                                "# %pyx_note action ... owner=NAME due=YYYY-MM-DD")]
    cells += [md("## Reports"), new_code_cell("%pyx_export all")]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "pyx", "display_name": "Python 3 (pyx)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"pyx-{'demo' if demo else 'tpl'}-{i:02d}"  # stable ids: the files don't churn
    return nb


def demo_notebook() -> nbformat.NotebookNode:
    params = dict(TEMPLATE_PARAMETERS, topic="order-1042-pending",
                  notes="customer charged but order 1042 shows PENDING")
    return build(params, demo=True)


def template_notebook() -> nbformat.NotebookNode:
    return build(dict(TEMPLATE_PARAMETERS), demo=False)


def write_all(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, nb in (("incident_template.ipynb", template_notebook()), ("demo_incident.ipynb", demo_notebook())):
        path = folder / name
        nbformat.write(nb, path)
        out.append(path)
    return out


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "notebooks")):
        print(p)
