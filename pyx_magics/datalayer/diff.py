"""Explicit diffs: "DB value vs cache value" and "expected vs actual" tables, written as evidence.

``write_diff`` compares field by field (nested dicts flatten to dotted paths) or, for tables,
row by row on a key. Left is the expected side (e.g. the database), right the actual (e.g. the cache).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pyx_magics.context import to_json_bytes
from pyx_magics.core.errors import UsageProblem
from pyx_magics.core.hashing import atomic_write
from pyx_magics.core.names import check_name

_MISSING = object()


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1]}`` → ``{"a.b": 1, "c[0]": 1}``; empty containers are kept as leaves."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj:
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)) and obj:
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix or "$"] = obj
    return out


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)) or type(value).__name__ == "Decimal":
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def compare_fields(left: Any, right: Any) -> list[dict[str, Any]]:
    """Entries ``{path, status, left, right}`` for every differing leaf; status is
    missing (only left), extra (only right), changed, or type_mismatch."""
    a, b = flatten(_plain(left)), flatten(_plain(right))
    entries = []
    for path in sorted(set(a) | set(b)):
        lv, rv = a.get(path, _MISSING), b.get(path, _MISSING)
        if rv is _MISSING:
            entries.append({"path": path, "status": "missing", "left": lv, "right": None})
        elif lv is _MISSING:
            entries.append({"path": path, "status": "extra", "left": None, "right": rv})
        elif _kind(lv) != _kind(rv):
            entries.append({"path": path, "status": "type_mismatch", "left": lv, "right": rv,
                            "left_type": _kind(lv), "right_type": _kind(rv)})
        elif lv != rv:
            entries.append({"path": path, "status": "changed", "left": lv, "right": rv})
    return entries


def _plain(obj: Any) -> Any:
    """Series/one-row frames and JSON strings become dicts so they compare field by field."""
    if hasattr(obj, "to_dict") and hasattr(obj, "index") and not hasattr(obj, "columns"):
        return obj.to_dict()
    if hasattr(obj, "to_dict") and hasattr(obj, "columns") and len(obj) == 1:
        return obj.iloc[0].to_dict()
    if isinstance(obj, (str, bytes)):
        try:
            return json.loads(obj)
        except ValueError:
            return obj
    return obj


def _rows(obj: Any) -> list[dict[str, Any]]:
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):
        return list(obj.to_dict(orient="records"))
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)) and all(isinstance(r, Mapping) for r in obj):
        return [dict(r) for r in obj]
    raise UsageProblem("a keyed diff needs two tables: DataFrames or lists of dicts")


def compare_tables(left: Any, right: Any, key: str | Sequence[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Row-by-row comparison on ``key``: (columns, rows with status match/changed/missing/extra)."""
    keys = [key] if isinstance(key, str) else list(key)
    lrows, rrows = _rows(left), _rows(right)
    columns: list[str] = []
    for r in lrows + rrows:
        columns.extend(c for c in r if c not in columns)
    for k in keys:
        if k not in columns:
            raise UsageProblem(f"key column {k!r} is in neither table", hint=f"columns: {', '.join(columns)}")

    def index(rows: Iterable[dict[str, Any]], side: str) -> dict[tuple[str, ...], dict[str, Any]]:
        out: dict[tuple[str, ...], dict[str, Any]] = {}
        for r in rows:
            k = tuple(str(r.get(c)) for c in keys)
            if k in out:
                raise UsageProblem(f"duplicate key {k} in the {side} table", hint="choose a unique key")
            out[k] = r
        return out

    li, ri = index(lrows, "left"), index(rrows, "right")
    values = [c for c in columns if c not in keys]
    result = []
    for kv in sorted(set(li) | set(ri)):
        lr, rr = li.get(kv), ri.get(kv)
        row: dict[str, Any] = dict(zip(keys, kv, strict=True))
        changed: list[str] = []
        if rr is None:
            row["status"] = "missing"
        elif lr is None:
            row["status"] = "extra"
        else:
            changed = [c for c in values if lr.get(c) != rr.get(c)]
            row["status"] = "changed" if changed else "match"
        row["changed_columns"] = ";".join(changed)
        for c in values:
            row[f"left_{c}"] = None if lr is None else lr.get(c)
            row[f"right_{c}"] = None if rr is None else rr.get(c)
        result.append(row)
    return keys + ["status", "changed_columns"] + [f"{s}_{c}" for c in values for s in ("left", "right")], result


def _csv_bytes(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})
    return buf.getvalue().encode("utf-8")


def write_diff(run: Any, label: str, left: Any, right: Any, key: str | Sequence[str] | None = None, *,
               left_name: str = "expected", right_name: str = "actual") -> dict[str, Any]:
    """Compare and write ``diff.<label>.<run_id>.json`` (and ``expected_vs_actual.<label>.<run_id>.csv``
    for keyed tables). Returns the diff document."""
    check_name(label, "diff label")
    red = run.redactor
    doc: dict[str, Any] = {"label": label, "left": left_name, "right": right_name}
    if key is None:
        entries = compare_fields(left, right)
        counts = {s: sum(e["status"] == s for e in entries) for s in ("missing", "extra", "changed", "type_mismatch")}
        doc.update(kind="fields", equal=not entries, counts=counts, entries=entries)
    else:
        columns, rows = compare_tables(left, right, key)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("match", "changed", "missing", "extra")}
        csv_path = run.declare_output(f"expected_vs_actual.{label}.{run.run_id}.csv", "expected_vs_actual")
        atomic_write(csv_path, red.text(_csv_bytes(columns, rows).decode("utf-8")).encode("utf-8"))
        doc.update(kind="table", key=[key] if isinstance(key, str) else list(key),
                   equal=counts["match"] == len(rows), counts=counts,
                   entries=[r for r in rows if r["status"] != "match"], table=Path(csv_path).name)
    path = run.declare_output(f"diff.{label}.{run.run_id}.json", "diff")
    atomic_write(path, to_json_bytes(red.json(doc)))
    return doc


def partition_table(run: Any, label: str, left: Mapping[int, int], right: Mapping[int, int], *,
                    left_name: str = "expected", right_name: str = "actual") -> list[dict[str, Any]]:
    """Per-partition counts side by side (e.g. produced vs consumed) to ``expected_vs_actual.<label>.<run_id>.csv``."""
    check_name(label, "diff label")
    rows = []
    for p in sorted(set(left) | set(right)):
        lv, rv = left.get(p), right.get(p)
        delta = None if lv is None or rv is None else rv - lv
        status = "missing" if rv is None else "extra" if lv is None else "match" if delta == 0 else "changed"
        rows.append({"partition": p, left_name: lv, right_name: rv, "delta": delta, "status": status})
    path = run.declare_output(f"expected_vs_actual.{label}.{run.run_id}.csv", "expected_vs_actual")
    atomic_write(path, _csv_bytes(["partition", left_name, right_name, "delta", "status"], rows))
    return rows
