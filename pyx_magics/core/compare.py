"""Run-vs-run comparison (contract sections 6 and 7). Pure: stdlib only.

Two sides (A: the original, B: the re-run) are lists of manifest dicts. Runs are matched by
task name and occurrence order within their side (the 2nd run of ``load`` in A against the
2nd in B). Each pair gets one verdict:

- ``reproduced``: same ``logic_key`` and ``output_digest`` (or outputs equal once run ids are ignored)
- ``data_changed``: same ``logic_key``, different outputs: which files, rows added/removed/changed
- ``logic_changed``: different ``logic_key``: the code or the input differ (says which)
- ``missing`` (in A, not B), ``new`` (in B, not A), ``failed`` (either run did not succeed)

Run ids in file names and contents, timings and the log never count as differences.
Artifact files are read through an :data:`Opener` so callers decide where they live.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from pyx_magics.core.runid import strip_run_ids

SCHEMA = "pyx.compare/1"
VERDICTS = ("reproduced", "data_changed", "logic_changed", "missing", "new", "failed")
MAX_DIFF_BYTES = 256 << 20  #: larger files are reported as changed without a row diff
MAX_EXAMPLES = 5
MAX_PATHS = 50
MAX_CODE_DIFF_LINES = 40
MAX_SEQ_LINES = 200_000  #: JSONL files with more lines are compared as multisets

#: ``opener(manifest, relative_path)`` returns the artifact opened for binary reading.
Opener = Callable[[Mapping[str, Any], str], IO[bytes]]


#: JSON keys that say when or how long pyx observed something, not what it saw (kafka_offsets'
#: ``sampled_at``, a scan's ``duration_ms``): dropped from JSON and JSONL outputs before comparing.
OBSERVATION_KEYS = frozenset({"sampled_at", "sampled_at_ms", "duration_ms"})


@dataclass
class Limits:
    max_bytes: int = MAX_DIFF_BYTES
    examples: int = MAX_EXAMPLES
    paths: int = MAX_PATHS
    ignore_keys: frozenset[str] = OBSERVATION_KEYS


# ---------------------------------------------------------------- matching


def pair_runs(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]
              ) -> list[tuple[str, int, Mapping[str, Any] | None, Mapping[str, Any] | None]]:
    """(task, occurrence, run in A or None, run in B or None), in A's order then B's extras."""

    def numbered(side: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], Mapping[str, Any]]:
        seen: Counter[str] = Counter()
        out: dict[tuple[str, int], Mapping[str, Any]] = {}
        for m in sorted(side, key=lambda m: (m.get("sequence") or 0, m.get("run_id") or "")):
            seen[m["task"]] += 1
            out[(m["task"], seen[m["task"]])] = m
        return out

    na, nb = numbered(a), numbered(b)
    keys = list(na) + [k for k in nb if k not in na]
    return [(task, n, na.get((task, n)), nb.get((task, n))) for task, n in keys]


# ---------------------------------------------------------------- sessions


def compare_sessions(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], opener: Opener,
                     *, limits: Limits | None = None) -> dict[str, Any]:
    """Compare two sides run by run; the result is JSON-ready (``schema: pyx.compare/1``)."""
    limits = limits or Limits()
    tasks = [compare_pair(task, n, ma, mb, opener, limits) for task, n, ma, mb in pair_runs(a, b)]
    counts = {v: sum(t["verdict"] == v for t in tasks) for v in VERDICTS}
    return {
        "schema": SCHEMA,
        "a": side_summary(a),
        "b": side_summary(b),
        "reproduced": bool(tasks) and counts["reproduced"] == len(tasks),
        "counts": counts,
        "tasks": tasks,
    }


def side_summary(side: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    sessions = sorted({str(m.get("session_id")) for m in side})
    topics = sorted({str(m.get("topic")) for m in side})
    return {"session_id": sessions[-1] if sessions else None, "sessions": sessions,
            "topic": topics[0] if len(topics) == 1 else (topics or None), "runs": len(side)}


def run_ref(m: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if m is None:
        return None
    keys = m.get("compare") or {}
    return {"run_id": m.get("run_id"), "session_id": m.get("session_id"), "sequence": m.get("sequence"),
            "status": m.get("status"), "manifest": f"{m.get('task')}.{m.get('run_id')}.manifest.json",
            "logic_key": keys.get("logic_key"), "output_digest": keys.get("output_digest")}


def compare_pair(task: str, occurrence: int, a: Mapping[str, Any] | None, b: Mapping[str, Any] | None,
                 opener: Opener, limits: Limits | None = None) -> dict[str, Any]:
    """The verdict and its reasons for one matched pair of runs (either may be None)."""
    limits = limits or Limits()
    entry: dict[str, Any] = {"task": task, "occurrence": occurrence, "verdict": "", "a": run_ref(a),
                             "b": run_ref(b), "reasons": []}
    reasons: list[str] = entry["reasons"]
    if a is None or b is None:
        entry["verdict"] = "new" if a is None else "missing"
        reasons.append("only in B" if a is None else "in A, not in B")
        return entry
    if a.get("status") != "succeeded" or b.get("status") != "succeeded":
        entry["verdict"] = "failed"
        for side, m in (("A", a), ("B", b)):
            if m.get("status") != "succeeded":
                err = m.get("error") or {}
                what = f": {err.get('type')}: {first_line(err.get('message'))}" if err else ""
                reasons.append(f"{side} {m.get('status')}{what}")
        return entry
    same_logic = (a.get("compare") or {}).get("logic_key") == (b.get("compare") or {}).get("logic_key")
    same_digest = (a.get("compare") or {}).get("output_digest") == (b.get("compare") or {}).get("output_digest")
    if not same_logic:
        entry["logic"] = logic_diff(a, b, limits)
        reasons.extend(entry["logic"]["reasons"])
    outputs = [] if same_digest else diff_outputs(a, b, opener, limits)
    changed = [o for o in outputs if o["change"] != "same"]
    if outputs:
        entry["outputs"] = changed
        reasons.extend(o["summary"] for o in changed)
        if not changed:
            reasons.append("outputs equal once run ids and observation times are ignored")
    if not same_logic:
        entry["verdict"] = "logic_changed"
    elif changed:
        entry["verdict"] = "data_changed"
        causes = likely_causes(a, b)
        if causes:
            entry["causes"] = causes
            reasons.extend(causes)
    else:
        entry["verdict"] = "reproduced"
    return entry


def first_line(text: Any) -> str:
    return str(text or "").strip().split("\n", 1)[0][:200]


# ---------------------------------------------------------------- logic


def logic_diff(a: Mapping[str, Any], b: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """Which part of the question differs: the code (with a short diff) and/or input keys."""
    out: dict[str, Any] = {"code_changed": False, "input_changed": [], "reasons": []}
    ca, cb = a.get("code") or {}, b.get("code") or {}
    if ca.get("sha256") != cb.get("sha256"):
        out["code_changed"] = True
        diff = list(difflib.unified_diff(str(ca.get("source", "")).splitlines(), str(cb.get("source", "")).splitlines(),
                                         "A", "B", lineterm="", n=1))
        out["code_diff"] = "\n".join(diff[:MAX_CODE_DIFF_LINES]) + ("\n..." if len(diff) > MAX_CODE_DIFF_LINES else "")
        out["reasons"].append(f"code changed ({sum(1 for d in diff[2:] if d[:1] in '+-')} line(s) differ)")
    pa = {k: v for k, v in ((a.get("input") or {}).get("params") or {}).items() if k != "notes"}
    pb = {k: v for k, v in ((b.get("input") or {}).get("params") or {}).items() if k != "notes"}
    changes = json_changes(pa, pb, limit=limits.paths)
    if changes["total"]:
        out["input_changed"] = changes["paths"]
        out["reasons"].append("input changed: " + ", ".join(p["path"] for p in changes["paths"][:10]))
    if not out["reasons"]:
        out["reasons"].append("logic key differs but code and input are equal (recorded by another pyx version?)")
    return out


def likely_causes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Why the same question got different answers: input files, notebook variables, data systems."""
    causes = []
    fa = {strip_run_ids(f["path"]): f["sha256"] for f in (a.get("files") or {}).get("inputs", [])}
    fb = {strip_run_ids(f["path"]): f["sha256"] for f in (b.get("files") or {}).get("inputs", [])}
    changed = sorted(p for p in fa.keys() & fb.keys() if fa[p] != fb[p])
    if changed:
        causes.append("input file(s) changed: " + ", ".join(changed[:10]))
    only = sorted(fa.keys() ^ fb.keys())
    if only:
        causes.append("input file(s) read by only one run: " + ", ".join(only[:10]))
    ra = {r["name"]: r.get("summary") for r in (a.get("namespace") or {}).get("reads", [])}
    rb = {r["name"]: r.get("summary") for r in (b.get("namespace") or {}).get("reads", [])}
    names = sorted(n for n in ra.keys() & rb.keys() if ra[n] != rb[n])
    if names:
        causes.append("notebook variable(s) read changed: " + ", ".join(names[:10]))
    ta = {(t.get("system"), t.get("alias")): t.get("fingerprint") for t in a.get("targets") or []}
    tb = {(t.get("system"), t.get("alias")): t.get("fingerprint") for t in b.get("targets") or []}
    servers = sorted(f"{s}:{al}" for s, al in ta.keys() & tb.keys() if ta[(s, al)] != tb[(s, al)])
    if servers:
        causes.append("data system identity changed: " + ", ".join(servers))
    return causes


# ---------------------------------------------------------------- outputs


def diff_outputs(a: Mapping[str, Any], b: Mapping[str, Any], opener: Opener, limits: Limits) -> list[dict[str, Any]]:
    """One entry per output path (run ids removed) that is added, removed or changed (or ``same``)."""

    def by_name(m: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
        out: dict[str, list[Mapping[str, Any]]] = {}
        for f in (m.get("files") or {}).get("outputs", []):
            out.setdefault(strip_run_ids(f["path"]), []).append(f)
        return out

    oa, ob = by_name(a), by_name(b)
    results = []
    for name in sorted(oa.keys() | ob.keys()):
        la, lb = oa.get(name, []), ob.get(name, [])
        for i in range(max(len(la), len(lb))):
            fa = la[i] if i < len(la) else None
            fb = lb[i] if i < len(lb) else None
            results.append(diff_file(name, a, fa, b, fb, opener, limits))
    return results


def diff_file(name: str, ma: Mapping[str, Any], fa: Mapping[str, Any] | None, mb: Mapping[str, Any],
              fb: Mapping[str, Any] | None, opener: Opener, limits: Limits) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": name, "change": "changed", "a": fa and fa["path"], "b": fb and fb["path"]}
    if fa is None or fb is None:
        entry["change"] = "added" if fa is None else "removed"
        rows = (fb or fa or {}).get("rows")
        entry["summary"] = f"output {name} {'only in B' if fa is None else 'not written by B'}" + (
            f" ({rows} rows)" if rows is not None else "")
        return entry
    if fa["sha256"] == fb["sha256"]:
        entry["change"] = "same"
        entry["summary"] = f"output {name} unchanged"
        return entry
    same_server = same_identity(name, fa, ma, mb)
    if same_server:
        entry["change"] = "same"
        entry["summary"] = f"output {name}: same server identity ({same_server}); the moment's readings differ"
        return entry
    if max(fa.get("bytes") or 0, fb.get("bytes") or 0) > limits.max_bytes:
        entry["summary"] = f"output {name} changed ({fa.get('bytes')} -> {fb.get('bytes')} bytes; too large to diff)"
        return entry
    texts = []
    for m, f in ((ma, fa), (mb, fb)):
        try:
            with opener(m, f["path"]) as fh:
                raw = fh.read(limits.max_bytes + 1)
        except OSError as exc:
            entry["summary"] = f"output {name} changed (cannot read {f['path']}: {type(exc).__name__})"
            return entry
        if hashlib.sha256(raw).hexdigest() != f["sha256"]:
            entry["tampered"] = True
        texts.append(strip_run_ids(raw.decode("utf-8", "replace")))
    ta, tb = texts
    if ta == tb:
        entry["change"] = "same"
        entry["summary"] = f"output {name} equal once run ids are ignored"
        return entry
    kind = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    detail: dict[str, Any]
    try:
        if kind == "csv":
            detail = diff_csv(ta, tb, limits)
        elif kind in ("jsonl", "ndjson"):
            ta, tb = (normalize_lines(t, limits.ignore_keys) for t in (ta, tb))
            detail = diff_lines(ta, tb, limits)
        elif kind == "json":
            ja, jb = (drop_keys(json.loads(t), limits.ignore_keys) for t in (ta, tb))
            detail = {"kind": "json", **json_changes(ja, jb, limit=limits.paths)}
        else:
            detail = {"kind": "bytes"}
    except (ValueError, csv.Error, RecursionError):
        detail = {"kind": "bytes", "note": f"not parseable as {kind}"}
    if (detail["kind"] == "json" and detail["total"] == 0) or (detail["kind"] == "jsonl" and ta == tb):
        entry["change"] = "same"
        entry["summary"] = f"output {name} equal as JSON once run ids and observation times are ignored"
        return entry
    entry.update(detail)
    entry["summary"] = f"output {name}: " + describe(detail, fa, fb)
    if entry.get("tampered"):
        entry["summary"] += " (a file on disk no longer matches its manifest: run pyx verify)"
    return entry


def same_identity(name: str, f: Mapping[str, Any], ma: Mapping[str, Any], mb: Mapping[str, Any]) -> str | None:
    """For a fingerprint output, the server fingerprint both runs recorded when it is the same.

    A fingerprint file also holds readings of the moment (server clock, TTL averages, scan
    timings); what it answers, which server was reached, is the identity hash in ``targets``."""
    if f.get("role") != "fingerprint":
        return None
    system = name.split(".")[1] if name.count(".") >= 2 else ""

    def ids(m: Mapping[str, Any]) -> list[str]:
        return sorted(str(t["fingerprint"]) for t in m.get("targets") or []
                      if t.get("fingerprint") and (t.get("system") == system or not system))

    a, b = ids(ma), ids(mb)
    return ", ".join(a) if a and a == b else None


def drop_keys(obj: Any, keys: frozenset[str]) -> Any:
    if isinstance(obj, dict):
        return {k: drop_keys(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [drop_keys(v, keys) for v in obj]
    return obj


def normalize_lines(text: str, keys: frozenset[str]) -> str:
    """JSONL with ``keys`` dropped from each JSON line (other lines kept as they are)."""
    if not keys:
        return text
    out = []
    for line in text.splitlines():
        try:
            out.append(json.dumps(drop_keys(json.loads(line), keys), sort_keys=True, ensure_ascii=False))
        except ValueError:
            out.append(line)
    return "\n".join(out)


def describe(d: Mapping[str, Any], fa: Mapping[str, Any], fb: Mapping[str, Any]) -> str:
    kind = d.get("kind")
    if kind in ("csv", "jsonl"):
        unit = "row" if kind == "csv" else "line"
        parts = [f"{d[k]} {unit}{'' if d[k] == 1 else 's'} {k.split('_')[1]}"
                 for k in ("rows_added", "rows_removed", "rows_changed") if d.get(k)]
        if d.get("columns_added"):
            parts.append("columns added: " + ", ".join(d["columns_added"]))
        if d.get("columns_removed"):
            parts.append("columns removed: " + ", ".join(d["columns_removed"]))
        if d.get("columns_changed"):
            parts.append("changed columns: " + ", ".join(f"{c} ({n})" for c, n in d["columns_changed"].items()))
        if not parts:
            parts.append("same rows, different order or formatting")
        key = f" (keyed by {d['key']})" if d.get("key") else (" (whole rows compared)" if kind == "csv" else "")
        return ", ".join(parts) + key
    if kind == "json":
        shown = ", ".join(f"{p['path']} {p['change']}" for p in d["paths"][:8])
        more = f" and {d['total'] - 8} more" if d["total"] > 8 else ""
        return f"{d['total']} JSON path(s) differ: {shown}{more}"
    return f"content changed ({fa.get('bytes')} -> {fb.get('bytes')} bytes)" + (f"; {d['note']}" if d.get("note") else "")


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def diff_csv(ta: str, tb: str, limits: Limits) -> dict[str, Any]:
    """Rows added/removed/changed, keyed by the first column when it is unique on both sides,
    otherwise as whole-row multisets (then only added/removed are known)."""
    ra, rb = _rows(ta), _rows(tb)
    ha, hb = (ra[0] if ra else []), (rb[0] if rb else [])
    body_a, body_b = ra[1:], rb[1:]
    common = [c for c in ha if c in hb]
    ia, ib = [ha.index(c) for c in common], [hb.index(c) for c in common]

    def project(row: list[str], idx: list[int]) -> tuple[str, ...]:
        return tuple(row[i] if i < len(row) else "" for i in idx)

    pa = [project(r, ia) for r in body_a]
    pb = [project(r, ib) for r in body_b]
    out: dict[str, Any] = {"kind": "csv", "rows_a": len(pa), "rows_b": len(pb), "key": None,
                           "columns_added": [c for c in hb if c not in ha],
                           "columns_removed": [c for c in ha if c not in hb],
                           "rows_added": 0, "rows_removed": 0, "rows_changed": 0}
    keys_a = [r[0] for r in pa] if common else []
    keys_b = [r[0] for r in pb] if common else []
    if common and len(set(keys_a)) == len(keys_a) and len(set(keys_b)) == len(keys_b):
        out["key"] = common[0]
        da, db = dict(zip(keys_a, pa, strict=True)), dict(zip(keys_b, pb, strict=True))
        added = [k for k in keys_b if k not in da]
        removed = [k for k in keys_a if k not in db]
        changed = [k for k in keys_a if k in db and da[k] != db[k]]
        cols: Counter[str] = Counter()
        for k in changed:
            for c, x, y in zip(common, da[k], db[k], strict=True):
                if x != y:
                    cols[c] += 1
        out.update(rows_added=len(added), rows_removed=len(removed), rows_changed=len(changed),
                   columns_changed=dict(cols.most_common()),
                   examples={"added": added[:limits.examples], "removed": removed[:limits.examples],
                             "changed": changed[:limits.examples]})
    else:
        ca, cb = Counter(pa), Counter(pb)
        out.update(rows_added=sum((cb - ca).values()), rows_removed=sum((ca - cb).values()))
    return out


def diff_lines(ta: str, tb: str, limits: Limits) -> dict[str, Any]:
    """Lines added/removed/changed (a changed line is one replaced in place), with 1-based examples."""
    la, lb = ta.splitlines(), tb.splitlines()
    out: dict[str, Any] = {"kind": "jsonl", "rows_a": len(la), "rows_b": len(lb),
                           "rows_added": 0, "rows_removed": 0, "rows_changed": 0}
    if max(len(la), len(lb)) > MAX_SEQ_LINES:
        ca, cb = Counter(la), Counter(lb)
        out.update(rows_added=sum((cb - ca).values()), rows_removed=sum((ca - cb).values()), note="multiset")
        return out
    in_a: list[int] = []
    in_b: list[int] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, la, lb, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        n = min(i2 - i1, j2 - j1)
        out["rows_changed"] += n
        out["rows_added"] += (j2 - j1) - n
        out["rows_removed"] += (i2 - i1) - n
        in_a.extend(range(i1 + 1, i2 + 1))
        in_b.extend(range(j1 + 1, j2 + 1))
    out["examples"] = {"lines_in_a": in_a[:limits.examples], "lines_in_b": in_b[:limits.examples]}
    return out


def json_changes(a: Any, b: Any, *, limit: int = MAX_PATHS) -> dict[str, Any]:
    """Paths (``$.rows[3].status``) where two JSON values differ: ``added``, ``removed`` or ``changed``."""
    paths: list[dict[str, str]] = []
    total = 0

    def note(path: str, change: str) -> None:
        nonlocal total
        total += 1
        if len(paths) < limit:
            paths.append({"path": path, "change": change})

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in x.keys() | y.keys():
                sub = f"{path}.{k}" if _plain_key(k) else f"{path}[{json.dumps(k)}]"
                if k not in y:
                    note(sub, "removed")
                elif k not in x:
                    note(sub, "added")
                else:
                    walk(x[k], y[k], sub)
        elif isinstance(x, list) and isinstance(y, list):
            for i in range(max(len(x), len(y))):
                if i >= len(y):
                    note(f"{path}[{i}]", "removed")
                elif i >= len(x):
                    note(f"{path}[{i}]", "added")
                else:
                    walk(x[i], y[i], f"{path}[{i}]")
        elif x != y or type(x) is not type(y):
            note(path, "changed")

    walk(a, b, "$")
    paths.sort(key=lambda p: p["path"])
    return {"total": total, "paths": paths}


def _plain_key(k: str) -> bool:
    return k.isidentifier()


# ---------------------------------------------------------------- rendering


def exit_code(result: Mapping[str, Any]) -> int:
    """0 when every task reproduced, 1 otherwise (including nothing to compare)."""
    return 0 if result.get("reproduced") else 1


def render_markdown(result: Mapping[str, Any], title: str | None = None) -> str:
    """The ``.compare.md`` report: a verdict line, a table per task and the reasons."""
    a, b = result["a"], result["b"]
    counts = result["counts"]
    verdict = "REPRODUCED" if result["reproduced"] else "NOT REPRODUCED"
    lines = [f"# {title or 'pyx compare'}", "",
             f"**{verdict}** · A `{a.get('session_id')}` ({a.get('runs')} runs) vs "
             f"B `{b.get('session_id')}` ({b.get('runs')} runs)", "",
             " · ".join(f"{v}: {counts[v]}" for v in VERDICTS if counts.get(v)) or "no tasks on either side", ""]
    if result["tasks"]:
        lines += ["| task | # | verdict | A run | B run | detail |", "|---|---|---|---|---|---|"]
        for t in result["tasks"]:
            detail = "; ".join(t["reasons"][:3]).replace("|", "\\|")
            lines.append(f"| {t['task']} | {t['occurrence']} | {t['verdict']} | {_rid(t['a'])} | {_rid(t['b'])} "
                         f"| {detail} |")
        lines.append("")
    for t in result["tasks"]:
        if t["verdict"] == "reproduced":
            continue
        lines += [f"## {t['task']} #{t['occurrence']}: {t['verdict']}", ""]
        lines += [f"- {r}" for r in t["reasons"]]
        code_diff = (t.get("logic") or {}).get("code_diff")
        if code_diff:
            lines += ["", "```diff", code_diff, "```"]
        for o in t.get("outputs", []):
            ex = o.get("examples")
            if ex and any(ex.values()):
                lines.append(f"- {o['path']} examples: " + "; ".join(
                    f"{k}: {', '.join(map(str, v))}" for k, v in ex.items() if v))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _rid(ref: Mapping[str, Any] | None) -> str:
    return f"`{ref['run_id']}` {ref['status']}" if ref else "-"
