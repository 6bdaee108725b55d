"""Reproducibility keys (contract section 7)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyx_magics.core.hashing import sha256_json
from pyx_magics.core.runid import strip_run_ids


def logic_key(task: str, code_sha256: str, params: Mapping[str, Any]) -> str:
    """sha256 over (task, code hash, canonical input without ``notes``): the same question was asked."""
    question = {k: v for k, v in params.items() if k != "notes"}
    return sha256_json({"task": task, "code": code_sha256, "input": question})


def output_digest(outputs: Iterable[Mapping[str, Any]]) -> str:
    """sha256 over the sorted (path without run ids, sha256) pairs of the outputs; the log is not an output."""
    pairs = sorted((strip_run_ids(str(f["path"])), str(f["sha256"])) for f in outputs)
    return sha256_json(pairs)
