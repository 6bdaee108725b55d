"""The ``pyx`` object a task sees: its input, run id, directory, outputs and data connections."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pyx_magics.core.errors import UsageProblem
from pyx_magics.core.hashing import atomic_write
from pyx_magics.core.names import check_output_name


def _json_default(obj: Any) -> Any:
    for attr in ("isoformat",):
        if hasattr(obj, attr):
            return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "__str__") and type(obj).__name__ in ("Decimal", "UUID"):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json_bytes(obj: Any) -> bytes:
    """JSON for evidence: NaN becomes null, Infinity a string; unserialisable values are a clear error."""
    try:
        text = json.dumps(_finite(obj), indent=2, ensure_ascii=False, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageProblem(f"cannot save as JSON: {exc}", hint="convert it to dicts, lists, str and numbers") from None
    return (text + "\n").encode("utf-8")


class TaskContext:
    """What ``pyx`` means inside a task. Everything written through it is redacted and declared."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self.input: dict[str, Any] = run.request.params
        self.run_id: str = run.run_id
        self.dir: Path = run.dir
        self.topic: str = run.session.topic
        self.env_label: str = run.session.env_label
        self._db: Any = None
        self._redis: Any = None
        self._kafka: Any = None

    def __repr__(self) -> str:
        return f"<pyx task {self._run.task!r} run {self.run_id} in {self.dir}>"

    def out(self, name: str, role: str | None = None) -> Path:
        """Declare an output file; returns its path (the run id is inserted before the extension)."""
        return Path(self._run.declare_output(name, role))

    def save(self, name: str, obj: Any) -> Path:
        """Write ``obj`` (DataFrame → CSV, dict/list → JSON, str → text, bytes as is), redacted, and declare it."""
        check_output_name(name)  # before any work: a bad name writes nothing
        red = self._run.redactor
        try:
            if hasattr(obj, "to_csv") and hasattr(obj, "columns"):
                name = name if "." in name else name + ".csv"
                data = red.text(obj.to_csv(index=False)).encode("utf-8")
            elif isinstance(obj, (dict, list, tuple)):
                name = name if "." in name else name + ".json"
                data = to_json_bytes(red.json(obj))
            elif isinstance(obj, str):
                name = name if "." in name else name + ".txt"
                data = red.text(obj).encode("utf-8")
            elif isinstance(obj, (bytes, bytearray)):
                data = red.bytes(bytes(obj))
            else:
                raise UsageProblem(
                    f"pyx.save cannot write a {type(obj).__name__}",
                    hint="pass a DataFrame, dict, list, str or bytes",
                )
        except RecursionError:
            raise UsageProblem(f"pyx.save({name!r}): the object is nested too deeply to save",
                               hint="flatten it, or save its parts") from None
        except UnicodeEncodeError as exc:
            raise UsageProblem(f"pyx.save({name!r}): the text is not valid Unicode (a lone surrogate at "
                               f"position {exc.start})", hint="save it as bytes") from None
        path = self.out(name)
        atomic_write(path, data)
        return path

    # data systems: imported on first use so a task without them needs no driver
    def db(self, **options: Any) -> Any:
        """A read-only PostgreSQL session from env (``DATABASE_URL`` or ``DB_*``), recorded in the manifest."""
        if self._db is None:
            from pyx_magics.datalayer.postgres import connect

            self._db = connect(self._run, **options)
        return self._db

    def redis(self, **options: Any) -> Any:
        """A read-only Redis client from env (``REDIS_URL`` or ``REDIS_*``), recorded in the manifest."""
        if self._redis is None:
            from pyx_magics.datalayer.redis import connect

            self._redis = connect(self._run, **options)
        return self._redis

    def kafka(self, **options: Any) -> Any:
        """A Kafka reader from ``KAFKA_BROKERS`` that never joins or commits to a group."""
        if self._kafka is None:
            from pyx_magics.datalayer.kafka import connect

            self._kafka = connect(self._run, **options)
        return self._kafka

    def fingerprint(self, system: str) -> dict[str, Any]:
        """Record which server ``system`` (postgres, redis, kafka) is: ``fingerprint.<system>.<run_id>.json``."""
        from pyx_magics.datalayer.fingerprint import fingerprint

        return fingerprint(self, system)

    def diff(self, label: str, left: Any, right: Any, key: Any = None, **options: Any) -> Any:
        """Field-by-field (or row-by-row with ``key``) diff written to ``diff.<label>.<run_id>.json``."""
        from pyx_magics.datalayer.diff import write_diff

        return write_diff(self._run, label, left, right, key=key, **options)

    def partition_table(self, label: str, left: dict[int, int], right: dict[int, int], **options: Any) -> Any:
        """Per-partition counts side by side (e.g. produced vs consumed) to
        ``expected_vs_actual.<label>.<run_id>.csv`` with delta and status columns."""
        from pyx_magics.datalayer.diff import partition_table

        return partition_table(self._run, label, left, right, **options)

    def close(self) -> None:
        for conn in (self._db, self._redis, self._kafka):
            if conn is not None and hasattr(conn, "close"):
                try:
                    conn.close()
                except Exception:
                    pass
        self._db = self._redis = self._kafka = None
