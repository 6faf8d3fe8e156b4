"""`llmops loadtest DEPLOYMENT`: load an applied deployment, judge it, keep the result in its record.

The settings are the Deployment's `rollout.load_test` (as recorded at its last apply) with the
command line's overrides on top, checked by the same spec model; without one, 8 clients for 20 s.
The load runs without the apply lock (it takes seconds to minutes); the result is then appended
to the record holding the lock, as `llmops rollback` writes, re-reading the record first so that
an apply in between is not undone. The record's fingerprint is kept, so `plan` stays clean.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from pydantic import ValidationError

from ..errors import LoadTestError
from ..project import Project
from ..specs.deployment import LoadTest
from ..state.artifacts import ArtifactStore
from ..state.records import ResourceRecord
from ..state.stores import open_store
from .generator import run_load
from .messages import load_messages
from .results import with_load_test
from .target import target_of
from .thresholds import judge_load


def loadtest(project: Project, name: str, overrides: dict[str, Any], show: Callable[[dict[str, Any]], None],
             lock_timeout: float = 30.0, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the load test and return the entry kept in the record: the run_load result plus
    `verdict` (None without thresholds), `thresholds`, `source`, `model_version` and `time`.
    `show` gets the entry before it is saved, so a busy lock never hides the numbers."""
    store = open_store(project)
    records = store.read_records()
    record = _applied(records, name)
    target = target_of(project, record)
    settings = load_settings(record.spec, overrides)
    thresholds = settings.thresholds.model_dump()
    report(f"loading {name} at {target.base_url} with {settings.clients} clients for {settings.duration_s:g} s…")
    result = run_load(target, settings.clients, settings.duration_s, max_requests=settings.max_requests,
                      max_tokens=settings.max_tokens, messages=load_messages(store, records, record.spec))
    given = {key: value for key, value in thresholds.items() if value is not None}
    entry = {**result, "verdict": judge_load(result, thresholds) if given else None, "thresholds": given,
             "source": "cli", "model_version": record.outputs.get("model_version"), "time": time.time()}
    show(entry)
    _save(project, store, name, entry, lock_timeout, report)
    return entry


def load_settings(spec: dict[str, Any], overrides: dict[str, Any]) -> LoadTest:
    """The spec's rollout.load_test (or the defaults) with the given overrides (None: not given)."""
    recorded = (spec.get("rollout") or {}).get("load_test") if isinstance(spec.get("rollout"), dict) else None
    merged = {**(recorded if isinstance(recorded, dict) else {}),
              **{key: value for key, value in overrides.items() if value is not None}}
    try:
        return LoadTest.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, error['loc'])) or 'load_test'}: {error['msg']}"
                             for error in exc.errors())
        raise LoadTestError(f"load test settings: {problems}") from None


def _applied(records: dict[str, ResourceRecord], name: str) -> ResourceRecord:
    record = records.get(f"Deployment/{name}")
    if record is None:
        raise LoadTestError(f"no Deployment named '{name}' has been applied in this project; run `llmops apply` first")
    return record


def _save(project: Project, store: ArtifactStore, name: str, entry: dict[str, Any], lock_timeout: float,
          report: Callable[[str], None]) -> None:
    lock = store.lock(project.settings.lock_ttl_s)
    lock.acquire(timeout_s=lock_timeout, command=f"llmops loadtest {name}")
    try:
        record = store.read_records().get(f"Deployment/{name}")
        if record is None:
            raise LoadTestError(f"Deployment '{name}' was deleted while the load test ran; its result is not kept")
        store.write_record(record.model_copy(update={"outputs": with_load_test(record.outputs, entry)}))
        if note := store.write_index():
            report(note)
    finally:
        lock.release()
