"""When a database source is queried, and which extract a Dataset's fingerprint names.

A database is not a file, so observation (plan, apply) makes its content visible: with
`refresh: on_apply` (the default) every plan and apply runs the query and stores the result
as a content-addressed extract under the state directory (`warehouse.py`); with
`refresh: manual` they reuse the last extract of the same query and query only when there is
none (`llmops data refresh NAME` queries on demand). Either way the extract's sha256 is the
Dataset's input `database:<ENV>`, so the Dataset, and everything downstream of it, changes
only when the rows did. `status` never queries: it shows the last extract.

Plan and status write nothing outside the state directory: an extract lives in it, and the
DVC stage (which runs at apply) reads it from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..specs.resource import Resource
from .warehouse import LATEST, Extract, extract, latest

NOT_EXTRACTED = "not extracted yet"


@dataclass(frozen=True)
class Observed:
    """A database Dataset's fingerprint input and what the plan says about it."""

    inputs: dict[str, str]
    note: str


def extract_dir(state_dir: Path, dataset: str) -> Path:
    return state_dir / "extracts" / dataset


def input_key(resource: Resource) -> str:
    return f"database:{resource.spec.source.database_url_env}"


def observe_database(resource: Resource, state_dir: Path, query: bool) -> Observed | None:
    """None for a Dataset that reads files; else its extract, querying when the policy says to
    (and `query` allows: status passes False)."""
    source = getattr(resource.spec, "source", None)
    if resource.kind != "Dataset" or source is None or source.kind() != "database":
        return None
    out = extract_dir(state_dir, resource.name)
    policy = source.refresh_policy()
    found = None if (query and policy == "on_apply") else latest(out, source.query)
    if found is None and query:
        found = extract(source.database_url_env, source.query, out)
        how = f"queried ${source.database_url_env} now"
    elif found is not None:
        how = f"last extract of this query (${source.database_url_env} not queried: " + (
            "refresh: manual; `llmops data refresh " + resource.name + "` queries again)" if policy == "manual"
            else "status never queries)")
    else:
        return Observed({input_key(resource): NOT_EXTRACTED}, f"refresh: {policy}; the query has not run yet")
    return Observed({input_key(resource): found.sha256}, f"refresh: {policy}; {how}: {_described(found)}")


def _described(found: Extract) -> str:
    return f"{found.rows:,} rows, {', '.join(found.columns)}, sha256 {found.sha256[:12]}"


def extract_path(state_dir: Path, dataset: str, sha256: str) -> Path:
    return extract_dir(state_dir, dataset) / f"{sha256}.parquet"


def refresh(resource: Resource, state_dir: Path) -> Extract:
    """Query now, whatever the policy (`llmops data refresh NAME`)."""
    source = resource.spec.source
    return extract(source.database_url_env, source.query, extract_dir(state_dir, resource.name))


def prune(state_dir: Path, dataset: str, keep: set[str]) -> None:
    """Remove a Dataset's extracts except `keep` (sha256s) and the latest; all of them when `keep`
    is empty (the Dataset was deleted). Extracts are whole query results: they must not pile up."""
    import shutil

    folder = extract_dir(state_dir, dataset)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
        return
    latest_sha = _latest_sha256(folder)
    for path in folder.glob("*.parquet"):
        if path.stem not in keep and path.stem != latest_sha:
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)


def _latest_sha256(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / LATEST).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
