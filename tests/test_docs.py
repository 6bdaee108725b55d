"""The docs stay true: generated references are fresh, links resolve, documented commands parse, Binder works."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.magic_arguments import parse_argstring

from pyx_magics.cli import build_parser
from pyx_magics.core import manifest
from pyx_magics.core.errors import UsageProblem
from pyx_magics.datalayer.config import CONTRACT_VARS
from pyx_magics.magics import PyxMagics

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BINDER = ROOT / "binder"
GENERATED = {DOCS / "reference" / "cli.md", DOCS / "reference" / "magics.md"}

_columns = os.environ.get("COLUMNS")
sys.path.insert(0, str(DOCS))
import gen_reference  # noqa: E402  (it pins COLUMNS for its own help formatting: put ours back)

sys.path.remove(str(DOCS))
if _columns is None:
    os.environ.pop("COLUMNS", None)
else:
    os.environ["COLUMNS"] = _columns


def markdown_files() -> list[Path]:
    files = sorted(DOCS.rglob("*.md")) + sorted(BINDER.glob("*.md")) + [ROOT / "README.md"]
    return [f for f in files if "dev" not in f.relative_to(ROOT).parts]


FENCE = re.compile(r"^(```+|~~~+)\s*([\w-]*)[^\n]*\n(.*?)^\1\s*$", re.M | re.S)
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def code_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    for m in FENCE.finditer(text):
        yield m.group(2).lower(), m.group(3)


def prose(text: str) -> str:
    """The text without fenced blocks and inline code (links in code are not links)."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """The anchors a markdown file offers: GitHub heading slugs (with -1, -2 for repeats) and explicit ids."""
    text = FENCE.sub("", path.read_text("utf-8"))
    seen: dict[str, int] = {}
    out = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = gen_reference.slug(m.group(1).replace("`", ""))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_generated_references_match_a_fresh_generation() -> None:
    """cli.md and magics.md equal what gen_reference.py generates from the live parsers and docstrings."""
    proc = subprocess.run([sys.executable, str(DOCS / "gen_reference.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "100", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, (
        "docs/reference is stale; run `python docs/gen_reference.py` and commit the result\n"
        + proc.stdout[-6000:] + proc.stderr[-2000:])


def test_generated_references_cover_every_subcommand_and_magic() -> None:
    """Every pyx subcommand and every registered magic has a section (the generator walks them all)."""
    cli_md = (DOCS / "reference" / "cli.md").read_text("utf-8")
    for name, _ in gen_reference.subcommands(build_parser()):
        assert f"\n## {name}\n" in cli_md, name
    magics_md = (DOCS / "reference" / "magics.md").read_text("utf-8")
    for name in ("pyx_topic", "pyx_run", "pyx_fingerprint", "pyx_env", "pyx_note", "pyx_export"):
        assert re.search(rf"^## %%?{name} \((line|cell) magic\)$", magics_md, re.M), name


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md: Path) -> None:
    """Every relative link (and its #anchor) in the docs points at something that exists."""
    broken = []
    for m in LINK.finditer(prose(md.read_text("utf-8"))):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (md.parent / path_part).resolve() if path_part else md
        if not dest.exists():
            broken.append(f"{target}: {dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading or id {anchor!r} in {dest.name}")
    assert not broken, f"{md.relative_to(ROOT)}:\n" + "\n".join(broken)


def command_lines(text: str, langs: tuple[str, ...]) -> Iterator[str]:
    """Logical lines (backslash continuations joined) of code blocks in ``langs``."""
    for lang, body in code_blocks(text):
        if lang in langs:
            yield from re.sub(r"\\\n\s*", " ", body).splitlines()


SHELL_STOP = {"|", "||", "&&", "&", ";", ">", ">>", "<", "2>", "2>&1"}


def pyx_argv(line: str) -> list[str] | None:
    """The arguments of a ``pyx ...`` shell line (up to a pipe, redirect or ``&``), or None if it is not one."""
    line = line.strip().removeprefix("$ ")
    if not re.match(r"^(\.venv/bin/)?pyx\s", line):
        return None
    words = shlex.split(line, comments=True)
    for i, w in enumerate(words):
        if w in SHELL_STOP or w.startswith((">", "2>")):
            words = words[:i]
            break
    return words[1:]


def parse_pyx(argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except (UsageProblem, SystemExit) as exc:
        raise AssertionError(f"`pyx {shlex.join(argv)}` does not parse: {exc}") from None


def test_documented_pyx_commands_parse() -> None:
    """Every `pyx ...` line in a bash block of the docs is accepted by the real `pyx` parser."""
    seen = 0
    for md in markdown_files():
        for line in command_lines(md.read_text("utf-8"), ("bash", "sh", "shell", "console")):
            argv = pyx_argv(line)
            if argv is not None:
                seen += 1
                try:
                    parse_pyx(argv)
                except AssertionError as exc:
                    raise AssertionError(f"{md.relative_to(ROOT)}: {exc}") from None
    assert seen > 20  # the guides are full of commands; finding few means the scan broke


def test_documented_magic_lines_parse() -> None:
    """Every `%pyx_...` / `%%pyx_run` line in a python block names a real magic and parses with its arguments."""
    seen = 0
    for md in markdown_files():
        for line in command_lines(md.read_text("utf-8"), ("python", "ipython")):
            m = re.match(r"^\s*%%?(pyx_\w+)\s*(.*)$", line)
            if not m:
                continue
            name, rest = m.groups()
            func: Any = getattr(PyxMagics, name, None)
            assert func is not None and hasattr(func, "parser"), \
                f"{md.relative_to(ROOT)}: %{name} is documented but no such pyx magic exists"
            try:
                parse_argstring(func, rest)
            except UsageError as exc:
                raise AssertionError(f"{md.relative_to(ROOT)}: `{line.strip()}` does not parse: {exc}") from None
            seen += 1
    assert seen > 10


def test_manifest_example_is_a_valid_recorded_run() -> None:
    """The example in manifest.md is a succeeded run that validates against the shipped schema."""
    example = gen_reference.embedded_example((DOCS / "reference" / "manifest.md").read_text("utf-8"))
    assert manifest.schema_errors(example) == []
    assert example["status"] == "succeeded" and example["task"] == gen_reference.EXAMPLE_TASK
    assert example["targets"] and example["data_access"] and example["files"]["outputs"]
    assert manifest.integrity_ok(example)  # produced by pyx, not edited by hand
    paths = [f["path"] for f in example["files"]["outputs"]] + [example["code"]["path"], example["log"]["path"]]
    assert all(not p.startswith("/") for p in paths)


def schema_fields(node: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, leaf name) of every property the schema names; array items restart the path."""
    if "$ref" in node:
        yield from schema_fields(defs[node["$ref"].rsplit("/", 1)[-1]], defs, "")
        return
    for branch in node.get("oneOf", []):
        yield from schema_fields(branch, defs, prefix)
    if "items" in node:
        yield from schema_fields(node["items"], defs, "")
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        yield path, name
        yield from schema_fields(sub, defs, path + ".")
    for name in node.get("required", []):
        if name not in node.get("properties", {}):
            yield f"{prefix}{name}", name


def test_manifest_reference_documents_every_schema_field() -> None:
    """Each property of manifest.schema.json is named in docs/reference/manifest.md."""
    schema = manifest.json_schema()
    text = (DOCS / "reference" / "manifest.md").read_text("utf-8")
    text = text[:text.index(gen_reference.EXAMPLE_BEGIN)]  # the example does not count as documentation
    named = {w for span in re.findall(r"`([^`]+)`", text) for w in re.findall(r"[\w.]+", span)}
    fields = list(schema_fields(schema, schema["$defs"]))
    documented = {path for path, leaf in fields if path in named or leaf in named}
    # an object counts as documented when its sub-fields are (`timing.started_at` documents `timing`)
    missing = sorted(p for p, _ in fields if p not in documented
                     and not any(d.startswith(p + ".") for d in documented))
    assert not missing, f"undocumented manifest fields: {missing}"


def test_env_vars_reference_lists_every_contract_variable() -> None:
    """docs/reference/env-vars.md names every variable the data layer reads."""
    text = (DOCS / "reference" / "env-vars.md").read_text("utf-8")
    missing = [v for v in CONTRACT_VARS if f"`{v}`" not in text]
    assert not missing, missing


def postbuild_commands() -> list[str]:
    text = (BINDER / "postBuild").read_text("utf-8")
    joined = re.sub(r"\\\n\s*", " ", text)
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "set "))]


def test_binder_postbuild_is_an_executable_script() -> None:
    """repo2docker runs binder/postBuild directly: it must be executable with a shebang."""
    path = BINDER / "postBuild"
    assert path.stat().st_mode & stat.S_IXUSR
    assert path.read_text("utf-8").startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in path.read_text("utf-8")


def test_binder_postbuild_installs_pyx_with_the_demo_extra_and_the_kernel() -> None:
    """postBuild's pip line installs this repo (root) with an existing extra; its pyx lines parse; its python -c compiles."""
    commands = postbuild_commands()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    pip = [c for c in commands if " pip install " in f" {c} "]
    assert len(pip) == 1
    target = next(w for w in shlex.split(pip[0]) if w.startswith(".["))
    assert target == ".[demo]" and "demo" in extras  # Binder runs postBuild from the repository root
    assert "-e" in shlex.split(pip[0])
    pyx_lines = [argv for c in commands if (argv := pyx_argv(c)) is not None]
    assert ["kernel", "install", "--sys-prefix"] in pyx_lines
    for argv in pyx_lines:
        parse_pyx(argv)
    for c in commands:
        words = shlex.split(c)
        if words[:2] == ["python", "-c"]:
            compile(words[2], "postBuild", "exec")


def test_binder_environment_pins_python_311() -> None:
    """environment.yml asks for the Python the project supports, and pip for postBuild."""
    env = (BINDER / "environment.yml").read_text("utf-8")
    assert re.search(r"^\s*-\s*python=3\.11\s*$", env, re.M)
    assert re.search(r"^\s*-\s*pip\s*$", env, re.M)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["requires-python"]
    assert requires == ">=3.11"


def test_binder_readme_launches_the_demo_notebook() -> None:
    """The launch line opens notebooks/demo_incident.ipynb, which exists and runs on the pyx kernel."""
    text = (BINDER / "README.md").read_text("utf-8")
    assert "mybinder.org/v2/gh/" in text and "labpath=notebooks%2Fdemo_incident.ipynb" in text
    nb = json.loads((ROOT / "notebooks" / "demo_incident.ipynb").read_text("utf-8"))
    assert nb["metadata"]["kernelspec"]["name"] == "pyx"
    assert any("start_demo_services" in "".join(c["source"]) for c in nb["cells"])
