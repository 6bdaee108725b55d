"""``pyx env confirm LABEL``: fingerprint the configured systems and record them under LABEL."""

from __future__ import annotations

import argparse
from typing import Any

from pyx_magics.core.errors import UsageProblem
from pyx_magics.core.names import check_name


def confirm(label: str, systems: list[str] | None = None, directory: str | None = None,
            topic: str | None = None) -> list[dict[str, Any]]:
    """Run one fingerprint task per system under ``label`` and record each identity; returns the records."""
    from pyx_magics.datalayer import guard
    from pyx_magics.datalayer.fingerprint import configured_systems, task_source
    from pyx_magics.execute import in_process
    from pyx_magics.runner import Session, TaskRequest, run_task

    check_name(label, "environment label")
    chosen = systems or configured_systems()
    if not chosen:
        raise UsageProblem("no data system configured", hint="set DATABASE_URL / REDIS_URL / KAFKA_BROKERS")
    session = Session.start(directory, topic or "env-confirm", label, resume=False)
    records = []
    with guard.confirming():
        for system in chosen:
            source = task_source(system)
            _, m = run_task(session, TaskRequest(f"fingerprint_{system}", source), in_process(source, {}))
            rec: dict[str, Any] = {"system": system, "status": m["status"], "manifest": f"fingerprint_{system}."
                                   f"{m['run_id']}.manifest.json", "error": m["error"]}
            if m["status"] == "succeeded":
                for target in m["targets"]:
                    key = guard.identity_key_of(target)
                    if target["system"] == system and key:
                        fp = next((o["path"] for o in m["files"]["outputs"] if o["role"] == "fingerprint"), None)
                        guard.record(session.dir, label, system, target["endpoint"], key, fp)
                        rec["identity_key"] = key
            records.append(rec)
    return records


def cmd_env(args: argparse.Namespace) -> int:
    records = confirm(args.label, args.system, args.dir, args.topic)
    bad = 0
    for r in records:
        if r["status"] == "succeeded" and r.get("identity_key"):
            print(f"confirmed {r['system']} as {args.label} (evidence: {r['manifest']})")
        else:
            bad += 1
            err = r["error"] or {}
            print(f"NOT confirmed {r['system']}: {err.get('type', r['status'])}: {err.get('message', '')}")
    return 1 if bad else 0


def register(sub: Any) -> None:
    s = sub.add_parser("env", help="confirm which environment the configured systems are",
                       description="`pyx env confirm LABEL` fingerprints the configured systems and records them "
                       "under LABEL in the investigation directory; later tasks that reach a recorded system "
                       "while their session declares another label are refused.")
    s.add_argument("action", choices=("confirm",), help="what to do")
    s.add_argument("label", help="environment label, e.g. prod or staging")
    s.add_argument("--system", action="append", choices=("postgres", "redis", "kafka"),
                   help="only this system (repeatable; default: every configured one)")
    s.add_argument("--dir", default=None, help="investigation directory (default: $PYX_DIR or ./temp)")
    s.add_argument("--topic", default=None, help="topic for the fingerprint evidence (default: env-confirm)")
    s.set_defaults(func=cmd_env)
