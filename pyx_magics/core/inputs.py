"""Validation of a task's input JSON (contract section 4).

Recognised keys: ``time_window`` {start, end, timezone}, ``entity_ids``, ``notes``;
every other key is a task parameter. Errors name the key and the problem.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pyx_magics.core.errors import InputError

MAX_DEPTH = 64
MAX_INPUT_BYTES = 1 << 20


def check_input_size(params: Any) -> None:
    """Inputs are parameters, stored in the input file and the manifest: JSON, at most 1 MiB.

    Checked before the (slower) validation walk. NaN and Infinity are refused: they are not JSON,
    and the input file could not say what the task saw.
    """
    try:
        size = len(json.dumps(params, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode())
    except ValueError:
        raise InputError("input: NaN and Infinity are not JSON numbers",
                         hint="pass null, a string such as \"NaN\", or a finite number") from None
    except (TypeError, RecursionError) as exc:
        raise InputError(f"input: not JSON ({type(exc).__name__}: {str(exc)[:100]})") from None
    if size > MAX_INPUT_BYTES:
        raise InputError(
            f"input: {size / 1e6:.1f} MB of JSON, more than the {MAX_INPUT_BYTES >> 20} MiB an input may hold",
            hint="inputs hold parameters (time window, ids, notes); put data in a file the task reads, "
                 "where it is hashed as an input")


def read_input_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read, size-check (before reading), decode and validate an input JSON file."""
    where = os.fspath(path)
    try:
        size = os.path.getsize(where)
        if size > MAX_INPUT_BYTES:
            raise InputError(f"{where}: {size / 1e6:.1f} MB, more than the {MAX_INPUT_BYTES >> 20} MiB an input "
                             "may hold", hint="put data in a file the task reads, where it is hashed as an input")
        with open(where, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputError(f"input {where!r} not found") from None
    except IsADirectoryError:
        raise InputError(f"input {where!r} is a directory") from None
    except OSError as exc:
        raise InputError(f"input {where!r} cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"input {where!r} is not valid UTF-8 (byte {exc.start})") from None
    return parse_input_text(text, where)


def parse_input_text(text: str, source: str = "input") -> dict[str, Any]:
    """Parse and validate input JSON text; syntax errors name line and column."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise InputError(f"{source}: JSON nested too deeply") from None
    return validate_input(data, source)


def _depth(obj: Any, limit: int) -> int:
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        cur, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(cur, dict):
            stack.extend((v, d + 1) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, d + 1) for v in cur)
    return deepest


def _parse_time(value: Any, key: str, tz: ZoneInfo | None) -> datetime:
    if not isinstance(value, str):
        raise InputError(f"time_window.{key}: expected an ISO 8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise InputError(f"time_window.{key}: {value!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        if tz is None:
            raise InputError(
                f"time_window.{key}: {value!r} has no UTC offset and time_window.timezone is not set",
                hint="add an offset such as +00:00 or set time_window.timezone to an IANA name",
            )
        parsed = parsed.replace(tzinfo=tz)
    return parsed


def validate_input(data: Any, source: str = "input") -> dict[str, Any]:
    """Check an input object; return it unchanged (a JSON object) or raise InputError."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: the input must be a JSON object, got {type(data).__name__}")
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise InputError(f"{source}: JSON nested deeper than {MAX_DEPTH} levels")
    for key in data:
        if not isinstance(key, str):
            raise InputError(f"{source}: keys must be strings, got {key!r}")
    tw = data.get("time_window")
    if tw is not None:
        if not isinstance(tw, dict):
            raise InputError("time_window: expected an object with start, end and timezone")
        unknown = set(tw) - {"start", "end", "timezone"}
        if unknown:
            raise InputError(f"time_window: unknown key(s) {sorted(unknown)}; use start, end, timezone")
        tz = None
        if tw.get("timezone") is not None:
            name = tw["timezone"]
            if not isinstance(name, str):
                raise InputError("time_window.timezone: expected an IANA name such as 'Europe/Paris'")
            try:
                tz = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise InputError(
                    f"time_window.timezone: unknown time zone {name!r}", hint="use an IANA name such as 'UTC'"
                ) from None
        for key in ("start", "end"):
            if key not in tw:
                raise InputError(f"time_window.{key}: missing")
        start = _parse_time(tw["start"], "start", tz)
        end = _parse_time(tw["end"], "end", tz)
        if end < start:
            raise InputError(f"time_window: end {tw['end']!r} is before start {tw['start']!r}")
    ids = data.get("entity_ids")
    if ids is not None:
        if not isinstance(ids, list):
            raise InputError("entity_ids: expected a list of strings or integers")
        for i, v in enumerate(ids):
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise InputError(f"entity_ids[{i}]: expected a string or an integer, got {v!r}")
    notes = data.get("notes")
    if notes is not None and not isinstance(notes, str):
        raise InputError("notes: expected a string")
    return data
