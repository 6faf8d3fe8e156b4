"""What each Dataset SQL reads, asked of DuckDB without importing it: `validate` and `plan` stay light.

The answers (data/sqlscan.py `analyze`: the files a source's SQL reads, or why a query is
refused) come from a content-addressed cache, and one `python -m llmops_engine.data.sqlscan`
subprocess answers the misses. A key covers the SQL, its role, the installed DuckDB version
(read from package metadata) and `_CACHE_FORMAT`, so a cached answer can never be stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from ..errors import DataError

Role = Literal["source", "transform"]
SCAN_TIMEOUT_S = 60
_CACHE_FORMAT = "sqlscan-2"  # bump when analyze's answers change for the same DuckDB


@dataclass(frozen=True)
class SqlFacts:
    """What a query reads (`patterns`, repo-relative, in order of appearance) or why it is refused.

    `offset` is the character offset into the SQL where the problem is, when DuckDB says.
    """

    patterns: tuple[str, ...] = ()
    problem: str | None = None
    offset: int | None = None



def scan_all(items: Sequence[tuple[str, Role]], cache_dir: Path | None, secrets: Sequence[str] = ()) -> list[SqlFacts]:
    """`analyze` for each (sql, role), without importing DuckDB into this process.

    Answers come from `cache_dir` (None: no cache) when this DuckDB version has seen the same
    SQL and role; the rest are analysed by one subprocess, which gets no variable in `secrets`
    (the specs' secret env names). Raises DataError if that fails.
    """
    keys = [_cache_key(sql, role) for sql, role in items]
    answers: dict[str, SqlFacts] = {}
    for key in keys if cache_dir else ():
        cached = _read_cached(cache_dir / f"{key}.json")
        if cached is not None:
            answers[key] = cached
    missing = {key: item for key, item in zip(keys, items) if key not in answers}
    if missing:
        fresh = _scan_in_subprocess(list(missing.values()), secrets)
        for key, facts in zip(missing, fresh):
            answers[key] = facts
            if cache_dir:
                cache_dir.mkdir(parents=True, exist_ok=True)
                _write_cached(cache_dir / f"{key}.json", facts)
    return [answers[key] for key in keys]


def _cache_key(sql: str, role: str) -> str:
    # The answer depends on DuckDB's parser: the installed version is read from package
    # metadata, which does not import DuckDB.
    try:
        duckdb_version = metadata.version("duckdb")
    except metadata.PackageNotFoundError:
        duckdb_version = "absent"
    material = json.dumps([_CACHE_FORMAT, duckdb_version, role, sql])
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _read_cached(path: Path) -> SqlFacts | None:
    try:
        return _facts_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError):  # absent or damaged: analyse again
        return None


def _write_cached(path: Path, facts: SqlFacts) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(asdict(facts)), encoding="utf-8")
    os.replace(partial, path)  # concurrent validates never see half a file


def _facts_from_json(data: dict[str, Any]) -> SqlFacts:
    patterns, problem, offset = data["patterns"], data["problem"], data["offset"]
    if not all(isinstance(pattern, str) for pattern in patterns):
        raise TypeError("patterns must be strings")
    if problem is not None and not isinstance(problem, str) or offset is not None and not isinstance(offset, int):
        raise TypeError("problem must be a string and offset an integer")
    return SqlFacts(tuple(patterns), problem, offset)


def _scan_in_subprocess(items: list[tuple[str, Role]], secrets: Sequence[str]) -> list[SqlFacts]:
    request = json.dumps([{"sql": sql, "role": role} for sql, role in items])
    command = [sys.executable, "-m", "llmops_engine.data.sqlscan"]
    env = {name: value for name, value in os.environ.items() if name not in secrets}
    try:
        done = subprocess.run(command, input=request, capture_output=True, text=True, timeout=SCAN_TIMEOUT_S,
                              env=env)
    except subprocess.TimeoutExpired:
        raise DataError(f"checking Dataset SQL with DuckDB took longer than {SCAN_TIMEOUT_S} s") from None
    except OSError as exc:
        raise DataError(f"cannot start DuckDB to check Dataset SQL: {exc}") from exc
    if done.returncode != 0:
        raise DataError(f"checking Dataset SQL with DuckDB failed (exit {done.returncode}): {done.stderr[-2000:].strip()}")
    try:
        answers = [_facts_from_json(answer) for answer in json.loads(done.stdout)]
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"checking Dataset SQL with DuckDB gave an unreadable answer: {exc}") from exc
    if len(answers) != len(items):
        raise DataError(f"checking Dataset SQL with DuckDB answered {len(answers)} of {len(items)} queries")
    return answers
