"""``pyx learn``: turn an investigation into two skill packages and a template notebook.

``<topic>.<session_id>.learn/project/``: SKILL.md plus ``references/`` with the concrete queries,
the tables, topics, key patterns and services used, a fact table backed by evidence and
``placeholders.json`` (the only place the placeholder mapping lives).

``<topic>.<session_id>.learn/global/``: the same playbook de-projected: project prefixes and the
detected identifiers replaced by placeholders (``<TABLE_1>``, ``<TOPIC_1>``, ``<KEY_PATTERN_1>``,
``<SERVICE_1>``, ...), the fingerprint → DB → Redis → Kafka playbook and templated queries. A
leakage check (run after every learn, or ``pyx learn --check DIR``) lists any project identifier
left in it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyx_magics.core.errors import UsageProblem
from pyx_magics.core.hashing import atomic_write, pretty_json
from pyx_magics.report import md
from pyx_magics.report.charts import load_json
from pyx_magics.report.model import Investigation, Note, Step

PLACEHOLDERS_FILE = "placeholders.json"
SCHEMA = "pyx.placeholders/1"
GENERIC = frozenset({
    "postgres", "postgresql", "redis", "valkey", "kafka", "tansu", "localhost", "public", "default", "root", "admin",
    "test", "main", "primary", "replica", "local", "prod", "staging", "true", "false", "none", "null", "cache",
    "db", "database", "user", "users", "data", "value", "values", "key", "keys", "topic", "topics", "service",
    "table", "tables", "order", "orders", "events", "status", "id", "ids", "name", "template0", "template1",
})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost", "0.0.0.0", "[::1]"})
SQL_NOT_TABLES = frozenset({"select", "lateral", "only", "where", "values", "dual", "unnest", "generate_series",
                            "set", "as", "on", "using", "with", "recursive", "join", "into"})
_TABLE_RE = re.compile(r"\b(?:from|join|update|into|table|truncate)\s+((?:\"?[A-Za-z_][\w$]*\"?\.)?\"?[A-Za-z_][\w$]*\"?)(\s*\()?",
                       re.I)
_CTE_RE = re.compile(r"(?:\bwith|,)\s*(?:recursive\s+)?([A-Za-z_]\w*)\s+as\s*\(", re.I)
_NOISE_FROM = re.compile(r"\b(?:extract|substring|trim|overlay|position)\s*\([^()]*\)|\bdistinct\s+from\b", re.I)
_TOPIC_KV = re.compile(r"\btopics?\s*[=:]\s*['\"]?([A-Za-z0-9][A-Za-z0-9._-]*)", re.I)
_GROUP_KV = re.compile(r"\b(?:group|group_id|consumer_group)\s*[=:]\s*['\"]?([A-Za-z0-9][A-Za-z0-9._-]*)", re.I)
_SERVICE_RE = re.compile(r"\b[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*[-_](?:service|svc|worker|consumer|producer|api|app|daemon)\b",
                         re.I)
_VAR_SEGMENT = re.compile(r"^(?:\d+|[0-9a-f]{8,}|[0-9a-f-]{32,36}|.*\d{4,}.*)$", re.I)
_HOST_KEYS = ("host", "addr", "address", "broker", "endpoint", "fqdn")
_NAME_KEYS = ("database", "dbname", "datname", "db_name", "cluster", "node", "instance", "user", "application")
# words that name the tools themselves, never a project: de-projecting them would break the playbook
_TOOL_NAMES = frozenset({"pyx", "postgres", "postgresql", "redis", "valkey", "kafka", "tansu", "public", "default",
                        "master", "replica", "primary", "root", "admin", "localhost", "pyx_cluster", "tansu_cluster"})
# commands whose first argument is a key (OBJECT/MEMORY subcommands take it second)
_KEY_FIRST = frozenset(["GET", "MGET", "SET", "DEL", "STRLEN", "GETRANGE", "EXISTS", "TYPE", "TTL", "PTTL", "EXPIRE", "HGET", "HMGET", "HLEN", "HSCAN", "HSET", "LLEN", "LRANGE", "LINDEX", "SCARD", "SSCAN", "SISMEMBER", "ZCARD", "ZSCORE", "ZRANGE", "ZSCAN", "XLEN", "XRANGE", "XREVRANGE", "XINFO", "INSPECT", "DUMP"])


# ---------------------------------------------------------------- identifiers


@dataclass
class Catalog:
    """Project identifiers an investigation used, with the steps that used them."""

    tables: dict[str, set[int]] = field(default_factory=dict)
    topics: dict[str, set[int]] = field(default_factory=dict)
    key_patterns: dict[str, set[int]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # concrete key -> its pattern
    services: dict[str, set[int]] = field(default_factory=dict)
    hosts: dict[str, set[int]] = field(default_factory=dict)
    names: dict[str, set[int]] = field(default_factory=dict)  # database, cluster, user ... names from identities
    queries: list[tuple[Step, str, dict[str, Any]]] = field(default_factory=list)  # (step, system, access entry)

    @staticmethod
    def _add(bucket: dict[str, set[int]], value: Any, step: int) -> None:
        if not isinstance(value, str):
            return
        v = value.strip().strip("\"'")
        if len(v) >= 3 and v.lower() not in GENERIC and not v.isdigit():
            bucket.setdefault(v, set()).add(step)


def key_pattern(key: str) -> str:
    """``acme:order:1042`` → ``acme:order:*`` (numeric, hex and id-like segments become ``*``)."""
    sep = ":" if ":" in key else ("." if "." in key else None)
    if sep is None:
        return key
    return sep.join("*" if _VAR_SEGMENT.match(seg) else seg for seg in key.split(sep))


def sql_tables(statement: str) -> list[str]:
    text = _NOISE_FROM.sub(" ", statement)
    ctes = {m.group(1).lower() for m in _CTE_RE.finditer(text)}
    out = []
    for m in _TABLE_RE.finditer(text):
        if m.group(2):  # a function call: from unnest(...)
            continue
        name = m.group(1).replace('"', "")
        bare = name.rsplit(".", 1)[-1]
        low = bare.lower()
        if low in SQL_NOT_TABLES or low in ctes or low.startswith("pg_") or name.lower().startswith(
                ("information_schema.", "pg_catalog.")):
            continue
        out.append(bare)
    return out


def catalog(inv: Investigation) -> Catalog:
    cat = Catalog()
    for step in inv.run_steps():
        m = step.manifest or {}
        n = step.number
        systems = {str(t.get("alias")): str(t.get("system")) for t in m.get("targets") or []}
        for t in m.get("targets") or []:
            host = (t.get("endpoint") or {}).get("host")
            if isinstance(host, str) and host not in LOOPBACK:
                cat._add(cat.hosts, host, n)
            for k, v in (t.get("identity") or {}).items():
                if not isinstance(v, str) or "version" in k.lower():
                    continue
                kl = k.lower()
                if any(h in kl for h in _HOST_KEYS):
                    if v not in LOOPBACK:
                        cat._add(cat.hosts, v, n)
                elif any(h in kl for h in _NAME_KEYS):
                    cat._add(cat.names, v, n)
        for a in m.get("data_access") or []:
            stmt = str(a.get("statement") or "")
            system = systems.get(str(a.get("target")), "") or _guess_system(stmt)
            cat.queries.append((step, system, a))
            if system == "postgres":
                for t in sql_tables(stmt):
                    cat._add(cat.tables, t, n)
            elif system == "redis":
                for key in redis_keys(stmt):
                    _add_key(cat, key, n)
            elif system == "kafka":
                topics = _TOPIC_KV.findall(stmt) or [w for w in re.findall(r"[A-Za-z][A-Za-z0-9_.-]*", stmt)
                                                    if re.search(r"[.-]", w) and w != a.get("op")]
                for t in topics:
                    cat._add(cat.topics, t, n)
            for g in _GROUP_KV.findall(stmt):
                cat._add(cat.services, g, n)
        for key, value in ((m.get("input") or {}).get("params") or {}).items():
            kl = str(key).lower()
            vals = value if isinstance(value, list) else [value]
            if re.search(r"(^|_)topics?$", kl):
                for v in vals:
                    cat._add(cat.topics, v, n)
            elif re.search(r"(^|_)(table|tables)$", kl):
                for v in vals:
                    cat._add(cat.tables, v, n)
            elif re.search(r"(^|_)(key|keys|key_pattern)$", kl):
                for v in vals:
                    if isinstance(v, str):
                        _add_key(cat, v, n)
        for f in (m.get("files") or {}).get("outputs") or []:
            _scan_output(cat, inv, f, n)
    for note in inv.notes:
        for mm in _SERVICE_RE.finditer(note.text):
            cat._add(cat.services, mm.group(0), note.steps[-1].number if note.steps else 0)
    return cat


def _guess_system(stmt: str) -> str:
    if re.match(r"\s*(select|with|explain|show)\b", stmt, re.I):
        return "postgres"
    if re.match(r"\s*(get|mget|hget|hgetall|scan|ttl|pttl|type|exists|smembers|lrange|zrange|xrange|strlen)\b", stmt, re.I):
        return "redis"
    return ""


def redis_keys(stmt: str) -> list[str]:
    words = stmt.split()
    if not words:
        return []
    out = []
    if "MATCH" in (w.upper() for w in words):
        i = [w.upper() for w in words].index("MATCH")
        if i + 1 < len(words):
            out.append(words[i + 1].strip("'\""))
    elif len(words) > 1 and words[0].upper() in _KEY_FIRST:
        out += [w.strip("'\"") for w in words[1:] if ":" in w or w == words[1]]
    elif len(words) > 2 and words[0].upper() in ("OBJECT", "MEMORY"):
        out.append(words[2].strip("'\""))
    return [k for k in out if k and not k.isdigit()]


def _add_key(cat: Catalog, key: str, step: int) -> None:
    pattern = key if "*" in key else key_pattern(key)
    Catalog._add(cat.key_patterns, pattern, step)
    if pattern != key and len(key) >= 3:
        cat.keys[key] = pattern


def _scan_output(cat: Catalog, inv: Investigation, f: dict[str, Any], n: int) -> None:
    name = str(f.get("path") or "")
    if not name.endswith((".json", ".jsonl")):
        return
    path = inv.artifact(name)
    if path is None:
        return
    if name.endswith(".jsonl"):
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                lines = [json.loads(line) for _, line in zip(range(5), fh, strict=False) if line.strip()]
        except (OSError, ValueError):
            return
        items: list[Any] = lines
    else:
        data = load_json(path, 2 << 20)
        items = [data] + ([x for x in data.get("topics", []) if isinstance(x, dict)] if isinstance(data, dict) else [])
    for item in items:
        if not isinstance(item, dict):
            continue
        Catalog._add(cat.topics, item.get("topic"), n)
        for k in ("group", "group_id", "consumer_group", "service"):
            Catalog._add(cat.services, item.get(k), n)
        if isinstance(item.get("key"), str) and name.startswith("redis_value."):
            _add_key(cat, item["key"], n)


# ---------------------------------------------------------------- placeholders and de-projection


@dataclass
class Deprojector:
    """Replaces project identifiers with placeholders; the same rules drive the leakage check."""

    placeholders: dict[str, str]  # placeholder -> identifier
    keys: dict[str, str]  # concrete key -> placeholder
    prefixes: list[dict[str, str]]  # {prefix, stem, placeholder, match: substring|token}

    @classmethod
    def build(cls, cat: Catalog, prefixes: Iterable[str]) -> Deprojector:
        ph: dict[str, str] = {}
        for label, bucket in (("TABLE", cat.tables), ("TOPIC", cat.topics), ("KEY_PATTERN", cat.key_patterns),
                              ("SERVICE", cat.services), ("HOST", cat.hosts), ("NAME", cat.names)):
            for i, value in enumerate(sorted(v for v in bucket if v.lower() not in _TOOL_NAMES), 1):
                if value not in ph.values():
                    ph[f"<{label}_{i}>"] = value
        by_value = {v: k for k, v in ph.items()}
        keys = {k: by_value[p] for k, p in cat.keys.items() if p in by_value}
        given = [p for p in prefixes if p and p.strip("_.:-")]
        stems = [{"prefix": p, "stem": p.strip("_.:-"), "match": "substring"} for p in given]
        known = {s["stem"].lower() for s in stems}
        for stem in detect_prefixes(cat):
            if stem.lower() not in known:
                stems.append({"prefix": stem, "stem": stem, "match": "token"})
                known.add(stem.lower())
        for i, s in enumerate(stems, 1):
            s["placeholder"] = f"<PROJECT_PREFIX_{i}>"
        return cls(ph, keys, stems)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "placeholders": self.placeholders, "keys": self.keys, "prefixes": self.prefixes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deprojector:
        return cls(dict(data.get("placeholders") or {}), dict(data.get("keys") or {}), list(data.get("prefixes") or []))

    def _identifier_re(self) -> re.Pattern[str] | None:
        """Whole identifiers (``server`` never matches inside ``inet_server_addr``); detected prefix stems
        also match as the head of an identifier (``acme`` in ``acme_customers``)."""
        names = sorted({*self.keys, *self.placeholders.values()}, key=len, reverse=True)
        stems = sorted({p["stem"] for p in self.prefixes if p.get("match") == "token"}, key=len, reverse=True)
        alts = []
        if names:
            alts.append(r"(?<![A-Za-z0-9_])(?:" + "|".join(map(re.escape, names)) + r")(?![A-Za-z0-9_])")
        if stems:
            alts.append(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, stems)) + r")(?![A-Za-z0-9])")
        return re.compile("|".join(alts), re.I) if alts else None

    def apply(self, text: str) -> str:
        lookup = {k.lower(): v for k, v in self.keys.items()}
        lookup.update({v.lower(): k for k, v in self.placeholders.items()})
        lookup.update({p["stem"].lower(): p["placeholder"] for p in self.prefixes if p.get("match") == "token"})
        rx = self._identifier_re()
        if rx is not None:
            text = rx.sub(lambda m: lookup.get(m.group(0).lower(), m.group(0)), text)
        for p in self.prefixes:
            if p.get("match") != "token":
                text = re.sub(re.escape(p["stem"]), p["placeholder"], text, flags=re.I)
        return text

    def hits(self, text: str) -> list[str]:
        found = []
        rx = self._identifier_re()
        if rx is not None:
            found += [m.group(0) for m in rx.finditer(text)]
        for p in self.prefixes:
            if p.get("match") != "token":
                found += [m.group(0) for m in re.finditer(re.escape(p["stem"]), text, flags=re.I)]
        return found


def detect_prefixes(cat: Catalog) -> list[str]:
    """First name segments shared by identifiers of two or more kinds (``acme`` of ``acme_orders`` and ``acme.events``)."""
    kinds: dict[str, set[str]] = {}
    for kind, bucket in (("table", cat.tables), ("topic", cat.topics), ("key", cat.key_patterns),
                         ("service", cat.services)):
        for value in bucket:
            first = re.split(r"[_.:\-]", value, maxsplit=1)[0]
            if len(first) >= 3 and first.lower() not in GENERIC and first != value:
                kinds.setdefault(first, set()).add(kind)
    return sorted(k for k, v in kinds.items() if len(v) >= 2)


# ---------------------------------------------------------------- leakage check


@dataclass
class Leak:
    path: Path
    line: int
    identifier: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: project identifier {self.identifier!r}"


def find_mapping(directory: Path) -> Path | None:
    """The project package's ``placeholders.json`` next to a learn package (or its global/ folder)."""
    for root in (directory, directory.parent):
        cand = root / "project" / "references" / PLACEHOLDERS_FILE
        if cand.is_file():
            return cand
    return None


def global_dir_of(directory: Path) -> Path:
    return directory / "global" if (directory / "global").is_dir() else directory


def check_leaks(directory: Path, prefixes: Iterable[str] = (), mapping: Path | None = None) -> list[Leak]:
    """Every project identifier (from the project's placeholders.json and ``prefixes``) left in the global package."""
    directory = Path(directory)
    gdir = global_dir_of(directory)
    if not gdir.is_dir():
        raise UsageProblem(f"{directory} is not a learn package", hint="give the .learn folder or its global/ folder")
    mapping = mapping or find_mapping(directory)
    dep = Deprojector({}, {}, [])
    if mapping is not None:
        try:
            dep = Deprojector.from_json(json.loads(mapping.read_text("utf-8")))
        except (OSError, ValueError) as exc:
            raise UsageProblem(f"cannot read {mapping}: {exc}") from None
    known = {p["stem"].lower() for p in dep.prefixes}
    for p in prefixes:
        stem = p.strip("_.:-")
        if stem and stem.lower() not in known:
            dep.prefixes.append({"prefix": p, "stem": stem, "placeholder": "<PROJECT_PREFIX>", "match": "substring"})
    if mapping is None and not dep.prefixes:
        raise UsageProblem(f"nothing to check {gdir} against: no {PLACEHOLDERS_FILE} found next to it",
                           hint="pass --project-prefix PREFIX")
    leaks: list[Leak] = []
    for path in sorted(p for p in gdir.rglob("*") if p.is_file()):
        if path.name == PLACEHOLDERS_FILE:
            leaks.append(Leak(path, 0, "the placeholder mapping belongs in the project package only"))
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        for i, line in enumerate(text.split("\n"), 1):
            leaks += [Leak(path, i, hit) for hit in dict.fromkeys(dep.hits(line))]
    return leaks


# ---------------------------------------------------------------- writing the packages


def skill_name(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s or "investigation")[:64].strip("-")


def front_matter(name: str, description: str) -> list[str]:
    return ["---", f"name: {name}", f"description: {json.dumps(md.shorten(description, 1000), ensure_ascii=False)}",
            "---", ""]


@dataclass
class LearnResult:
    root: Path
    written: list[Path]
    leaks: list[Leak]


def learn(inv: Investigation, out_dir: Path, prefixes: Iterable[str] = ()) -> LearnResult:
    """Write ``<topic>.<sid>.learn/{project,global}`` and the template notebook into ``out_dir``; check for leaks."""
    from pyx_magics.report import template

    out_dir = out_dir.resolve()
    root = inv.report_path(out_dir, "learn")
    cat = catalog(inv)
    dep = Deprojector.build(cat, list(prefixes))
    written: list[Path] = []
    tpl = template.write(inv, out_dir)
    written.append(tpl)
    written += _write_project(inv, root / "project", cat, dep, tpl)
    written += _write_global(inv, root / "global", cat, dep)
    return LearnResult(root, written, check_leaks(root))


def _write(path: Path, lines: list[str], inv: Investigation) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, inv.redactor.text("\n".join(lines).rstrip("\n") + "\n").encode("utf-8"))
    return path


def _first(inv: Investigation, kind: str) -> str:
    notes = inv.notes_of(kind)
    return md.shorten(notes[0].text, 200) if notes else ""


def _systems(step: Step) -> str:
    return ", ".join(sorted({str(t.get("system")) for t in (step.manifest or {}).get("targets") or []})) or "no data system"


def _evidence(inv: Investigation, note: Note, base: Path) -> tuple[str, str]:
    links, shas = [], []
    for s in note.steps[-2:]:
        if s.manifest_path is not None:
            links.append(md.link(f"step {s.number} manifest", md.href(s.manifest_path, base)))
            h = inv.file_hash(s.manifest_path)
            shas.append(md.code(md.short_sha(h[0]), True) if h else "missing")
    return (", ".join(links) or "— (no task before this note)"), (", ".join(shas) or "—")


def _write_project(inv: Investigation, pdir: Path, cat: Catalog, dep: Deprojector, tpl: Path) -> list[Path]:
    ref = pdir / "references"
    written = []
    problem = _first(inv, "problem") or f"the {inv.topic} incident"
    systems = sorted({str(t.get("system")) for s in inv.run_steps() for t in (s.manifest or {}).get("targets") or []})
    lines = front_matter(skill_name(f"{inv.topic}-investigation"),
                         f"Project playbook from the {inv.topic} investigation ({problem}). Use when a similar "
                         f"problem shows up: re-run its {len(inv.run_steps())} checks over "
                         f"{', '.join(systems) or 'the data layer'} with the recorded queries, tables, topics and "
                         "key patterns; the facts it established are backed by manifests.")
    log = inv.report_path(pdir.parent.parent, "inspect.md")
    where = f" ({md.link('inspect log', md.href(log, pdir))})" if log.exists() else ""
    lines += [f"# {inv.topic}: how it was investigated", "",
              f"Session `{inv.session_id}`, environment **{inv.env_label.upper()}**. Evidence lives in the "
              f"investigation directory{where}.", ""]
    lines += ["## When to use", ""]
    for kind, label in (("problem", "Symptom"), ("expected", "Expected"), ("scope", "Scope")):
        for n in inv.notes_of(kind)[:2]:
            lines.append(f"- **{label}:** {md.prose(md.shorten(n.text, 300))}")
    lines += ["", "## Playbook (in the order it was run)", ""]
    for s in inv.steps:
        m = s.manifest or {}
        ops = sorted({str(a.get("op")) for a in m.get("data_access") or []})
        lines.append(f"{s.number}. `{s.task}` ({_systems(s)}; {s.status})" + (f": {', '.join(ops)}" if ops else ""))
    lines += ["", f"Re-run it for the next incident: {md.link(tpl.name, md.href(tpl, pdir))} "
              f"(`pyx rerun {tpl.name} -p topic NEW-TOPIC -p entity_ids '[...]'`).", ""]
    lines += ["## What it established", ""]
    for kind, label in (("root_cause", "Root cause"), ("fix", "Fix"), ("prevention", "Prevention")):
        for n in inv.notes_of(kind)[:3]:
            lines.append(f"- **{label}:** {md.prose(md.shorten(n.text, 300))}")
    lines += ["", "## References", "",
              "- [references/queries.md](references/queries.md): the concrete queries and commands, per step",
              "- [references/catalog.md](references/catalog.md): tables, topics, key patterns, services and hosts",
              "- [references/facts.md](references/facts.md): facts with their evidence and hashes",
              f"- [references/{PLACEHOLDERS_FILE}](references/{PLACEHOLDERS_FILE}): placeholder mapping used by the "
              "global package (keep it here)"]
    written.append(_write(pdir / "SKILL.md", lines, inv))

    q = ["# Queries and commands", ""]
    for s in inv.run_steps():
        acc = [(sys_, a) for st, sys_, a in cat.queries if st is s]
        if not acc:
            continue
        q += [f"## Step {s.number}: `{s.task}`", "",
              f"Manifest: {md.link(s.manifest_path.name, md.href(s.manifest_path, ref))}" if s.manifest_path else "", ""]
        for sys_, a in acc:
            q += [f"- {sys_ or a.get('target')} · {a.get('op')} · rows {a.get('rows')}", "",
                  *md.fence(str(a.get("statement") or ""), "sql" if sys_ == "postgres" else "text"), ""]
    if len(q) == 2:
        q.append("_No query recorded: the tasks did not use `pyx.db()`, `pyx.redis()` or `pyx.kafka()`._")
    written.append(_write(ref / "queries.md", q, inv))

    c = ["# Catalog", "", "Identifiers this investigation used, with the steps that used them.", ""]
    for title, bucket in (("Tables", cat.tables), ("Topics", cat.topics), ("Key patterns", cat.key_patterns),
                          ("Services", cat.services), ("Hosts", cat.hosts), ("Other names", cat.names)):
        c += [f"## {title}", ""]
        if bucket:
            c += md.table(["name", "placeholder", "steps"], (
                [md.code(v, True), md.code(next((k for k, x in dep.placeholders.items() if x == v), ""), True),
                 ", ".join(str(n) for n in sorted(steps) if n)] for v, steps in sorted(bucket.items())))
        else:
            c.append("_None detected._")
        c.append("")
    if cat.keys:
        c += ["## Example keys", "", *(f"- {md.code(k)} (pattern {md.code(p)})" for k, p in sorted(cat.keys.items())), ""]
    written.append(_write(ref / "catalog.md", c, inv))

    f = ["# Facts", "", "Each fact links to the manifest of the step that proves it (sha256 of the manifest file).", ""]
    rows = []
    for n in inv.notes:
        if n.kind in ("finding", "root_cause", "fix", "impact", "problem", "scope"):
            link, sha = _evidence(inv, n, ref)
            rows.append([md.cell(f"{n.kind}: {n.text}", 200), link, sha])
    for s in inv.run_steps():
        for out in (s.manifest or {}).get("files", {}).get("outputs") or []:
            p = inv.artifact(out["path"])
            if p is None or not p.exists() or len(rows) >= 200:
                continue
            rows_txt = f", {out['rows']} rows" if out.get("rows") is not None else ""
            rows.append([md.cell(f"step {s.number} `{s.task}` wrote {out['path']}{rows_txt}", 200),
                         md.link(out["path"], md.href(p, ref)), md.code(md.short_sha(out.get("sha256")), True)])
    f += md.table(["fact", "evidence", "sha256"], rows) if rows else ["_No facts recorded yet._"]
    written.append(_write(ref / "facts.md", f, inv))

    path = ref / PLACEHOLDERS_FILE
    ref.mkdir(parents=True, exist_ok=True)
    atomic_write(path, inv.redactor.text(pretty_json(dep.to_json()).decode("utf-8")).encode("utf-8"))
    written.append(path)
    return written


GLOBAL_PLAYBOOK = """\
## Playbook: fingerprint → database → cache → event stream

Treat the environment as an input, not an assumption; run every check as a recorded task
(`%%pyx_run TASK`), so each conclusion has a manifest, a log and output files behind it.

0. **Confirm the environment.** `%pyx_env` (label, endpoints, listening ports), then
   `%pyx_fingerprint` (database, cache and broker identity). A system confirmed under one label and
   reached under another is refused.
1. **Database (source of truth).** Read the canonical record(s) for the entity ids in the time
   window; check timestamps and timezone boundaries; check replica lag if reads go to a replica.
   Save rows with `pyx.save("db_rows.<label>", df)`.
2. **Cache (derived view).** Confirm the key exists, its TTL and serialization version; compare the
   cached value with the database value: `pyx.diff("db_vs_cache", db_value, cache_value)`.
3. **Event stream (async pipeline).** Confirm the messages were produced; check consumer-group
   offsets and lag per partition (`kafka_offsets.<label>.json`); look for duplicates and check the
   consumer's idempotency / de-duplication.
4. **Record diffs, not raw dumps.** `diff.*.json`, `expected_vs_actual.*.csv`, message counts per
   partition: the reader should not need the raw logs.
5. **Write down the conclusions as you go.** `%pyx_note problem|expected|scope|hypothesis|finding|
   root_cause|fix|prevention|impact|status ...` and `%pyx_note action ... owner=NAME due=YYYY-MM-DD`.
6. **Communicate and learn.** `%pyx_export all` writes the inspect log, the teammate + leader
   summary, these skill packages and a parameterized template notebook for the next incident.
"""


def template_query(dep: Deprojector, statement: str, inv: Investigation) -> str:
    """A recorded statement with project identifiers and the incident's ids and times as placeholders."""
    return incident_values(dep.apply(statement), inv)


def incident_values(text: str, inv: Investigation) -> str:
    """``text`` with the incident's entity ids and time-window bounds as ``{entity_id}``, ``{start}``, ``{end}``."""
    ids: set[str] = set()
    bounds: dict[str, str] = {}
    for s in inv.run_steps():
        params = (s.manifest or {}).get("input", {}).get("params") or {}
        ids.update(str(e) for e in params.get("entity_ids") or [])
        tw = params.get("time_window")
        if isinstance(tw, dict):
            for k in ("start", "end"):
                if isinstance(tw.get(k), str):
                    bounds[tw[k]] = "{" + k + "}"
    for value, ph in sorted(bounds.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(value, ph)
    for e in sorted(ids, key=len, reverse=True):
        if len(e) >= 2:
            text = re.sub(r"(?<![A-Za-z0-9_])" + re.escape(e) + r"(?![A-Za-z0-9_])", "{entity_id}", text)
    return text


def _write_global(inv: Investigation, gdir: Path, cat: Catalog, dep: Deprojector) -> list[Path]:
    systems = sorted({str(t.get("system")) for s in inv.run_steps() for t in (s.manifest or {}).get("targets") or []})
    lines = front_matter("data-incident-playbook",
                         "Playbook for 'the data is wrong' incidents across a database, a cache and an event stream: "
                         "fingerprint the environment, then check the source of truth, the cache and the async "
                         "pipeline, with recorded evidence (pyx manifests) and templated queries. Learned from a "
                         "past investigation and de-projected (project names are placeholders).")
    lines += ["# Data-layer incident playbook", "", GLOBAL_PLAYBOOK, "## A worked example (de-projected)", "",
              f"Systems involved: {', '.join(systems) or 'none recorded'}.", ""]
    for kind, label in (("problem", "Symptom"), ("expected", "Expected")):
        for n in inv.notes_of(kind)[:1]:
            lines.append(f"- **{label}:** {md.prose(md.shorten(n.text, 300))}")
    lines += ["", "Steps:", ""]
    for s in inv.steps:
        ops = sorted({str(a.get("op")) for a in (s.manifest or {}).get("data_access") or []})
        lines.append(f"{s.number}. `{s.task}` ({_systems(s)})" + (f": {', '.join(ops)}" if ops else ""))
    lines.append("")
    lessons = [(k, label) for k, label in (("hypothesis", "Hypothesis"), ("root_cause", "Root cause"), ("fix", "Fix"),
                                           ("prevention", "Prevention")) if inv.notes_of(k)]
    if lessons:
        lines += ["Lessons:", ""]
        for kind, label in lessons:
            for n in inv.notes_of(kind)[:3]:
                lines.append(f"- **{label}:** {md.prose(md.shorten(n.text, 300))}")
        lines.append("")
    if dep.placeholders or dep.prefixes:
        lines += ["## Placeholders", "",
                  "Names in angle brackets stand for a project's own identifiers; map them to yours before use.", ""]
        kinds = {"TABLE": "a database table", "TOPIC": "a Kafka topic", "KEY_PATTERN": "a cache key pattern (`*` = "
                 "the entity id)", "SERVICE": "a service or consumer group", "HOST": "a host name",
                 "NAME": "a database, cluster or user name", "PROJECT_PREFIX": "the project's naming prefix"}
        names = [*dep.placeholders, *(p["placeholder"] for p in dep.prefixes)]
        for ph in names:
            kind = re.sub(r"_\d+$", "", ph.strip("<>"))
            lines.append(f"- `{ph}`: {kinds.get(kind, 'a project identifier')}")
        lines += ["", "`{entity_id}`, `{start}` and `{end}` are the incident's parameters (entity ids, time window).", ""]
    lines += ["## References", "", "- [references/queries.md](references/queries.md): templated queries and commands"]
    out = [_write(gdir / "SKILL.md", [incident_values(dep.apply(x), inv) for x in lines], inv)]

    q = ["# Templated queries and commands", "",
         "Recorded statements of the example investigation with project identifiers and incident values replaced.", ""]
    by_system: dict[str, list[str]] = {}
    for _, sys_, a in cat.queries:
        stmt = template_query(dep, str(a.get("statement") or ""), inv)
        bucket = by_system.setdefault(sys_ or "other", [])
        if stmt not in bucket:
            bucket.append(stmt)
    order = ["postgres", "redis", "kafka"]
    for sys_ in sorted(by_system, key=lambda s: (order.index(s) if s in order else 9, s)):
        q += [f"## {sys_}", ""]
        for stmt in by_system[sys_][:30]:
            q += [*md.fence(stmt, "sql" if sys_ == "postgres" else "text"), ""]
    if not by_system:
        q.append("_No query recorded in the example investigation._")
    out.append(_write(gdir / "references" / "queries.md", [dep.apply(x) for x in q], inv))
    return out
