"""Tamper fuzz (issue 8): ``pyx verify`` catches every change of a manifest's content or of an artifact,
re-formatting a manifest (key order, indentation, escapes) is not a change, and ``manifest.read``
only ever fails with an ``EvidenceError``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyx_magics import cli
from pyx_magics.core import manifest
from pyx_magics.core.errors import EvidenceError
from pyx_magics.core.hashing import canonical_json
from pyx_magics.execute import in_process
from pyx_magics.runner import Session, TaskRequest, run_task

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TASKS = {
    "orders": "print('order 1042 PAID')\npyx.save('orders', {'id': 1042, 'status': 'PAID', 'amount': 12.5})\n"
              "pyx.save('rows.csv', 'id,status\\n1042,PAID\\n')",
    "blob": "import sys\nprint('to stderr', file=sys.stderr)\npyx.save('blob.bin', bytes(range(256)))",
    "broken": "print('about to fail')\nraise ValueError('order 1042 not found')",
}


@dataclass
class Evidence:
    """A real investigation directory to copy: three runs of one session (one failed)."""

    root: Path
    names: list[str]  # manifest file names
    docs: dict[str, dict[str, Any]]  # name -> parsed manifest
    artifacts: list[tuple[str, str]]  # (manifest name, artifact path) for logs and outputs


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory) -> Evidence:
    root = tmp_path_factory.mktemp("evidence") / "inv"
    session = Session.start(root, "tamper", resume=False)
    for task, source in TASKS.items():
        run_task(session, TaskRequest(task, source), in_process(source, {}, live_out=io.StringIO(),
                                                                live_err=io.StringIO()))
    names = sorted(p.name for p in root.glob("*.manifest.json"))
    docs = {n: manifest.read(root / n) for n in names}
    artifacts = [(n, f["path"]) for n in names for f in docs[n]["files"]["outputs"]]
    artifacts += [(n, docs[n]["log"]["path"]) for n in names]
    report = manifest.verify([root])
    assert report.ok and report.problems == [] and len(names) == 3 and len(artifacts) == 6
    return Evidence(root, names, docs, artifacts)


@contextlib.contextmanager
def copy_of(ev: Evidence) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pyx-tamper-") as tmp:
        dest = Path(tmp) / "inv"
        shutil.copytree(ev.root, dest, symlinks=True)
        yield dest


def verify(root: Path) -> tuple[manifest.VerifyReport, int]:
    """The core report and the exit code of ``pyx verify`` on the same directory."""
    report = manifest.verify([root])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["verify", str(root)])
    assert code == (0 if report.ok else 1)
    return report, code


def read_cleanly(path: Path) -> dict[str, Any] | None:
    """``manifest.read``: a dict, or an EvidenceError (None); any other exception fails the test."""
    try:
        return manifest.read(path)
    except EvidenceError:
        return None


def same_content(data: bytes, original: dict[str, Any]) -> bool:
    try:
        return canonical_json(json.loads(data.decode("utf-8"))) == canonical_json(original)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


def ascii_canonical(doc: Any) -> str:
    """Canonical JSON that also holds lone surrogates (as escapes)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def caught(report: manifest.VerifyReport, name: str) -> bool:
    return not report.ok and any(p.fatal and p.manifest == name for p in report.problems)


# ---------------------------------------------------------------- raw byte mutations


def flip(data: bytes, at: int, xor: int) -> bytes:
    return data[:at] + bytes([data[at] ^ xor]) + data[at + 1:]


@FUZZ
@given(st.data())
def test_any_byte_flip_truncation_or_garbage_in_a_manifest_is_caught_unless_the_content_is_equal(evidence, data):
    name = data.draw(st.sampled_from(evidence.names))
    original = (evidence.root / name).read_bytes()
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
    at = data.draw(st.integers(0, len(original) - 1))
    if kind == "flip":
        mutated = flip(original, at, data.draw(st.integers(1, 255)))
    elif kind == "truncate":
        mutated = original[:at]
    elif kind == "insert":
        mutated = original[:at] + data.draw(st.binary(min_size=1, max_size=16)) + original[at:]
    else:
        junk = data.draw(st.binary(min_size=1, max_size=16))
        mutated = original[:at] + junk + original[at + len(junk):]
    assume(mutated != original)
    with copy_of(evidence) as root:
        (root / name).write_bytes(mutated)
        read_cleanly(root / name)
        report, _ = verify(root)
        equal = same_content(mutated, evidence.docs[name])
        assert report.ok == equal, (kind, at, report.problems)
        if not equal:
            assert caught(report, name)
        # besides the mutated manifest, only its successor may be named: its chain link no longer holds
        assert {p.manifest for p in report.problems if p.fatal and "chain broken" not in p.message} <= {name}


# ---------------------------------------------------------------- structured mutations


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``obj`` (dict keys and list indexes)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


def get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def kind_of(value: Any) -> str:
    return "bool" if isinstance(value, bool) else "number" if isinstance(value, (int, float)) else type(value).__name__


HOSTILE_STRINGS = st.sampled_from(["", "\ud800", "a\x00b", "../../etc/passwd", "/etc/passwd", "x" * 300,
                                   "running", "succeeded", "0" * 64, "NaN"])
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8), HOSTILE_STRINGS,
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)


def dump(doc: Any, style: int) -> bytes:
    """The manifest as pyx writes it (0), compact (1), or with every non-ASCII character escaped (2)."""
    if style == 0:  # lone surrogates become bytes that are not UTF-8: a hostile file, not a crash of the test
        return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == 1:
        return json.dumps(doc, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return json.dumps(doc, indent=1, ensure_ascii=True).encode()


@FUZZ
@given(st.data())
def test_deleting_retyping_changing_or_swapping_any_value_of_a_manifest_is_caught(evidence, data):
    name = data.draw(st.sampled_from(evidence.names))
    doc = copy.deepcopy(evidence.docs[name])
    path = data.draw(st.sampled_from(list(paths(doc))))
    parent, key, old = get(doc, path[:-1]), path[-1], get(doc, path)
    op = data.draw(st.sampled_from(["delete", "retype", "change", "swap"]))
    if op == "delete":
        del parent[key]
    elif op == "retype":
        parent[key] = data.draw(JSON_VALUES.filter(lambda v: kind_of(v) != kind_of(old)))
    elif op == "change":
        parent[key] = data.draw(JSON_VALUES.filter(lambda v: kind_of(v) == kind_of(old) and v != old)
                                if not isinstance(old, (dict, list)) else st.just(type(old)()))
    else:
        other = evidence.docs[data.draw(st.sampled_from([n for n in evidence.names if n != name]))]
        try:
            parent[key] = copy.deepcopy(get(other, path))
        except (KeyError, IndexError, TypeError):
            parent[key] = None
    assume(ascii_canonical(doc) != ascii_canonical(evidence.docs[name]))
    with copy_of(evidence) as root:
        (root / name).write_bytes(dump(doc, data.draw(st.integers(0, 2))))
        read_cleanly(root / name)
        report, code = verify(root)
        assert caught(report, name) and code == 1, (op, path, report.problems)
        assert {p.manifest for p in report.problems if p.fatal and "chain broken" not in p.message} == {name}


def shuffled(obj: Any, rnd: Any) -> Any:
    if isinstance(obj, dict):
        keys = list(obj)
        rnd.shuffle(keys)
        return {k: shuffled(obj[k], rnd) for k in keys}
    if isinstance(obj, list):
        return [shuffled(v, rnd) for v in obj]
    return obj


@settings(FUZZ, max_examples=40)
@given(st.data())
def test_reordering_keys_or_reformatting_a_manifest_is_not_tampering(evidence, data):
    name = data.draw(st.sampled_from(evidence.names))
    doc = shuffled(evidence.docs[name], data.draw(st.randoms(use_true_random=False)))
    indent = data.draw(st.sampled_from([None, 0, 1, 4, "\t"]))
    text = json.dumps(doc, indent=indent, ensure_ascii=data.draw(st.booleans()), sort_keys=False)
    with copy_of(evidence) as root:
        (root / name).write_text(text, "utf-8")
        report, code = verify(root)
        assert report.ok and report.problems == [] and code == 0


# ---------------------------------------------------------------- artifacts


@FUZZ
@given(st.data())
def test_any_change_to_a_log_or_an_output_is_caught_and_names_the_file(evidence, data):
    name, rel = data.draw(st.sampled_from(evidence.artifacts))
    with copy_of(evidence) as root:
        target = root / rel
        original = target.read_bytes()
        ops = ["append", "delete", "symlink"] + (["flip", "truncate", "same_size"] if original else [])
        op = data.draw(st.sampled_from(ops))
        if op == "append":
            target.write_bytes(original + data.draw(st.binary(min_size=1, max_size=64)))
        elif op == "delete":
            target.unlink()
        elif op == "symlink":  # the same bytes, but outside the directory
            outside = root.parent / "outside"
            outside.write_bytes(original)
            target.unlink()
            target.symlink_to(outside)
        elif op == "flip":
            target.write_bytes(flip(original, data.draw(st.integers(0, len(original) - 1)),
                                    data.draw(st.integers(1, 255))))
        elif op == "truncate":
            target.write_bytes(original[:data.draw(st.integers(0, len(original) - 1))])
        else:
            junk = data.draw(st.binary(min_size=len(original), max_size=len(original)).filter(lambda b: b != original))
            target.write_bytes(junk)
        report, code = verify(root)
        assert caught(report, name) and code == 1, (op, rel, report.problems)
        (problem,) = report.problems
        assert problem.message.startswith(("output " + rel, "log " + rel))


def test_a_manifest_copied_over_another_is_caught_by_its_file_name(evidence):
    a, b = evidence.names[:2]
    with copy_of(evidence) as root:
        shutil.copyfile(root / a, root / b)  # every hash inside still matches: only the name tells
        report, code = verify(root)
        assert caught(report, b) and code == 1
        assert "file name does not match its task and run id" in report.problems[0].message


def test_verify_survives_lone_surrogates_nul_bytes_and_paths_out_of_the_directory(evidence):
    name = evidence.names[0]
    for edit in ({"code": "\ud800"}, {"out": "a\x00b"}, {"out": "\udcff"}, {"out": "../../etc/passwd"},
                 {"out": "/etc/passwd"}, {"log": "\ud800"}):
        doc = copy.deepcopy(evidence.docs[name])
        if "code" in edit:
            doc["code"]["source"] = edit["code"]
        elif "out" in edit:
            doc["files"]["outputs"][0]["path"] = edit["out"]
        else:
            doc["log"]["path"] = edit["log"]
        with copy_of(evidence) as root:
            (root / name).write_bytes(dump(doc, 2))
            report, code = verify(root)
            assert caught(report, name) and code == 1, (edit, report.problems)


# ---------------------------------------------------------------- the reader


@settings(FUZZ, max_examples=300)
@given(st.binary(max_size=4096))
def test_reading_arbitrary_bytes_fails_only_with_an_evidence_error(tmp_path_factory, raw):
    path = tmp_path_factory.getbasetemp() / "fuzz.manifest.json"
    path.write_bytes(raw)
    assert read_cleanly(path) is None


JSON_DOCS = st.recursive(JSON_VALUES, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=6) | st.sampled_from(sorted(manifest.json_schema()
                                                                                     ["required"])),
                                           inner, max_size=6), max_leaves=30)


@settings(FUZZ, max_examples=300)
@given(JSON_DOCS)
def test_reading_arbitrary_json_fails_only_with_an_evidence_error(tmp_path_factory, doc):
    path = tmp_path_factory.getbasetemp() / "fuzz-json.manifest.json"
    path.write_bytes(json.dumps(doc).encode())
    result = read_cleanly(path)
    assert result is None or not manifest.schema_errors(result)


def test_reading_deep_huge_or_odd_json_fails_only_with_an_evidence_error(tmp_path):
    path = tmp_path / "odd.manifest.json"
    for raw in (b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b"1" * 5000,
                b'{"schema": NaN}', b"\xef\xbb\xbf{}", b'"\\ud800"', b"\x00" * 10, b"{" * 70_000_000):
        path.write_bytes(raw)
        assert read_cleanly(path) is None
    path.unlink()
    path.mkdir()
    assert read_cleanly(path) is None
