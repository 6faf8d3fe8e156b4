"""Everything `llmops report` shows, gathered read-only from the store, the journal and the request logs.

`collect(engine)` returns plain data (`ReportData`) for `page.py` to draw. It never writes:
the store is opened only if it exists, the journal is read through a read-only SQLite
connection (the `Journal` class creates its file and schema), artifacts are read with a size
cap, and request logs only as their last `log_lines` entries. Records and artifacts are
shared, possibly hand-edited files, so every field is checked for its type and anything
unreadable becomes a line in `problems` instead of an exception.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..engine import Engine
from ..errors import LLMOpsError
from ..state.artifacts import ArtifactStore
from ..state.records import ResourceRecord

MAX_ARTIFACT_BYTES = 20 * 2**20
LOG_LINES = 2000  # request log entries read per deployment
JOURNAL_ROWS = 200  # deployment apply steps read from the journal
MAX_VERSIONS = 8  # latency histograms per deployment (the most recent versions)
MAX_MISSED_QUERIES = 10


@dataclass
class LossCurve:
    job: str
    version: str
    train: list[tuple[float, float]]
    eval_points: list[tuple[float, float]]  # eval_loss of evaluations that scored this model, at its last step
    summary: dict[str, Any]


@dataclass
class EvaluationView:
    name: str
    state: str
    passed: bool | None
    examples: Any
    systems: dict[str, dict[str, Any]]  # role -> {"label", "metrics"}; candidate first, then baselines, variants
    variants: list[str]
    checks: list[dict[str, Any]]
    regression: dict[str, Any] | None  # {"dataset", "examples", "systems": role -> metrics}
    notes: list[str]


@dataclass
class KnowledgeView:
    name: str
    state: str
    facts: dict[str, Any]
    checks: list[dict[str, Any]]  # metric, value, min, passed
    missed: list[dict[str, Any]]
    queries: int | None


@dataclass
class GuardrailView:
    name: str
    state: str
    cases: Any
    passed: Any
    policy_sha256: str
    checks: list[dict[str, Any]]


@dataclass
class RolloutEvent:
    deployment: str
    time: float
    event: str  # apply | failed | rollback (llmops rollback) | interrupted | started (running now)
    status: str
    version: str
    previous_version: str
    strategy: str
    canary: list[dict[str, Any]]
    message: str


@dataclass
class LatencyGroup:
    deployment: str
    version: str
    latencies_ms: list[float]
    requests: int
    errors: int
    status_counts: dict[str, int]


@dataclass
class ReportData:
    project: str
    store_url: str
    generated_at: float
    resources: list[dict[str, Any]] = field(default_factory=list)
    losses: list[LossCurve] = field(default_factory=list)
    evaluations: list[EvaluationView] = field(default_factory=list)
    knowledge: list[KnowledgeView] = field(default_factory=list)
    guardrails: list[GuardrailView] = field(default_factory=list)
    rollouts: list[RolloutEvent] = field(default_factory=list)
    load_tests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    latency: list[LatencyGroup] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def collect(engine: Engine, log_lines: int = LOG_LINES) -> ReportData:
    project = engine.project
    data = ReportData(project=project.root.name, store_url=project.artifact_store_url(), generated_at=time.time())
    store = _existing_store(engine)
    if store is None:
        data.problems.append(f"no artifact store at {data.store_url} yet: nothing has been applied")
        return data
    from ..report import status_rows

    data.resources = status_rows(engine)
    if data.resources and not any(row["desired_fingerprint"] for row in data.resources):
        data.problems += _spec_problem(engine)
    latest = {f"{row['kind']}/{row['name']}": row["desired_fingerprint"] for row in data.resources}
    records = engine.records()
    reader = _Artifacts(store, data.problems, latest)
    records |= _failed_first_attempts(data.resources, records, reader)
    evaluations = [r for r in records.values() if r.kind == "Evaluation"]
    for record in records.values():
        if record.kind == "TuningJob":
            data.losses.append(_loss_curve(record, reader, evaluations))
        elif record.kind == "Evaluation":
            data.evaluations.append(_evaluation(record, reader, _state(data.resources, record)))
        elif record.kind == "KnowledgeBase":
            data.knowledge.append(_knowledge(record, reader, _state(data.resources, record)))
        elif record.kind == "Guardrail":
            data.guardrails.append(_guardrail(record, reader, _state(data.resources, record)))
        elif record.kind == "Deployment":
            data.load_tests[record.name] = _load_tests(record)
            data.latency += _latency(engine, record.name, log_lines, data.problems)
    data.rollouts = _rollouts(project.state_dir / "journal.sqlite", records, data.problems)
    return data


def _existing_store(engine: Engine) -> ArtifactStore | None:
    """The store, unless it is a local directory that does not exist (opening it would create it)."""
    url = engine.project.artifact_store_url()
    if urlparse(url).scheme in ("", "file", "local") and not (Path(urlparse(url).path) / "refs").is_dir():
        return None
    return engine.store


def _spec_problem(engine: Engine) -> list[str]:
    """Why every resource reads as an orphan: usually specs that do not load (status then compares with nothing)."""
    from ..errors import SpecError

    try:
        engine.load()
    except SpecError as exc:
        first = str(exc.issues[0]) if exc.issues else ""
        return [f"the specs do not load ({len(exc.issues)} error(s), e.g. {first}); states compare with no spec: "
                "run llmops validate"]
    return []


def _state(rows: list[dict], record: ResourceRecord) -> str:
    return next((r["state"] for r in rows if r["kind"] == record.kind and r["name"] == record.name), record.status)


def _failed_first_attempts(rows: list[dict], records: dict[str, ResourceRecord],
                           reader: "_Artifacts") -> dict[str, ResourceRecord]:
    """Gated resources that never passed (so have no record) but left a failed gate's report: shown as failed."""
    found = {}
    for row in rows:
        key, fingerprint = f"{row['kind']}/{row['name']}", row["desired_fingerprint"]
        if key in records or not fingerprint or row["kind"] not in GATE_REPORTS:
            continue
        if reader.kept(fingerprint, GATE_REPORTS[row["kind"]]):
            found[key] = ResourceRecord(kind=row["kind"], name=row["name"], fingerprint=fingerprint, spec={},
                                        status="failed", message="its gate failed; never applied")
    return found


GATE_REPORTS = {"Evaluation": "metrics.json", "KnowledgeBase": "retrieval.json"}  # kept when a gate fails


class _Artifacts:
    """JSON artifacts of a record: the report of its latest attempt if that failed its gate, else
    its published object."""

    def __init__(self, store: ArtifactStore, problems: list[str], latest: dict[str, str | None]):
        self.store = store
        self.problems = problems
        self.latest = latest  # key -> the fingerprint the specs ask for now

    def kept(self, fingerprint: str, name: str) -> bool:
        return (self._kept_dir(fingerprint) / name).is_file()

    def _kept_dir(self, fingerprint: str) -> Path:
        return self.store.root / "reports" / fingerprint  # a failed gate's results (LocalStore layout)

    def json(self, record: ResourceRecord, name: str) -> dict | None:
        for directory in self._directories(record):
            path = directory / name
            if path.is_file():
                return self._read(record, path)
        return None

    def _directories(self, record: ResourceRecord) -> list[Path]:
        """Newest first: a failed attempt at the fingerprint the specs ask for now, a failed attempt at
        the record's own, then what the record published."""
        latest = self.latest.get(record.key)
        directories = [self._kept_dir(latest)] if latest and latest != record.fingerprint else []
        if record.status != "ready":
            directories.append(self._kept_dir(record.fingerprint))
        try:
            if self.store.has(record.fingerprint):
                directories.append(self.store.local_path(record.fingerprint))
        except (OSError, LLMOpsError) as exc:
            self.problems.append(f"{record.key}: artifacts not readable: {exc}")
        return directories

    def _read(self, record: ResourceRecord, path: Path) -> dict | None:
        try:
            if path.stat().st_size > MAX_ARTIFACT_BYTES:
                self.problems.append(f"{record.key}: {path.name} is over {MAX_ARTIFACT_BYTES:,} bytes; not shown")
                return None
            value = json.loads(path.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError) as exc:
            self.problems.append(f"{record.key}: {path.name} is not readable JSON: {exc}")
            return None
        return value if isinstance(value, dict) else None


# per kind ------------------------------------------------------------------------------------

def _loss_curve(record: ResourceRecord, reader: _Artifacts, evaluations: list[ResourceRecord]) -> LossCurve:
    metrics = reader.json(record, "metrics.json") or {}
    train = _pairs(metrics.get("loss_per_step"))
    last_step = train[-1][0] if train else _number(metrics.get("steps")) or 0.0
    eval_points = []
    for evaluation in evaluations:
        outputs = evaluation.outputs
        if outputs.get("model_fingerprint") == record.fingerprint and _number((outputs.get("metrics") or {}).get("eval_loss")) is not None:
            eval_points.append((last_step, outputs["metrics"]["eval_loss"]))
    eval_points += _pairs(metrics.get("eval_loss_per_step"))
    summary = {k: record.outputs.get(k, metrics.get(k)) for k in ("steps", "initial_loss", "final_loss", "method", "base_model")}
    summary["tokens_per_second"] = metrics.get("tokens_per_second")
    return LossCurve(record.name, str(record.outputs.get("model_version", record.fingerprint[:12])), train,
                     sorted(eval_points), summary)


def _evaluation(record: ResourceRecord, reader: _Artifacts, state: str) -> EvaluationView:
    document = reader.json(record, "metrics.json")
    if document is None:
        return _evaluation_from_outputs(record, state)
    systems: dict[str, dict[str, Any]] = {}
    candidate = _dict(document.get("candidate"))
    systems["candidate"] = {"label": candidate.get("model", ""), "metrics": _dict(candidate.get("metrics"))}
    for role, entry in _dict(document.get("baselines")).items():
        systems[str(role)] = {"label": _dict(entry).get("model", ""), "metrics": _dict(_dict(entry).get("metrics"))}
    variants = []
    for role, entry in _dict(document.get("variants")).items():
        variants.append(str(role))
        systems[str(role)] = {"label": _dict(entry).get("model", ""), "metrics": _dict(_dict(entry).get("metrics"))}
    regression = None
    if isinstance(document.get("regression"), dict):
        raw = document["regression"]
        regression = {"dataset": raw.get("dataset", ""), "examples": raw.get("examples"),
                      "systems": {str(role): _dict(v.get("metrics")) for role, v in raw.items() if isinstance(v, dict)}}
    checks = [c for c in document.get("thresholds") or [] if isinstance(c, dict)]
    return EvaluationView(record.name, state, _bool(document.get("passed")), document.get("examples"), systems,
                          variants, checks, regression, [str(n) for n in document.get("notes") or []])


def _evaluation_from_outputs(record: ResourceRecord, state: str) -> EvaluationView:
    """An evaluation whose metrics.json is not here (e.g. a remote store's object not fetched): its record."""
    outputs = record.outputs
    systems = {"candidate": {"label": outputs.get("model_fingerprint", ""), "metrics": _dict(outputs.get("metrics"))}}
    systems |= {str(r): {"label": "", "metrics": _dict(m)} for r, m in _dict(outputs.get("baseline_metrics")).items()}
    variants = {str(r): {"label": "", "metrics": _dict(m)} for r, m in _dict(outputs.get("variant_metrics")).items()}
    raw = outputs.get("regression_metrics")
    regression = ({"dataset": "", "examples": None, "systems": {str(r): _dict(m) for r, m in raw.items()}}
                  if isinstance(raw, dict) else None)
    return EvaluationView(record.name, state, _bool(outputs.get("passed")), outputs.get("examples"), systems | variants,
                          list(variants), [], regression, [str(n) for n in outputs.get("notes") or []])


def _knowledge(record: ResourceRecord, reader: _Artifacts, state: str) -> KnowledgeView:
    outputs = record.outputs
    report = reader.json(record, "retrieval.json") or {}
    metrics = _dict(outputs.get("retrieval_metrics")) or _dict(report.get("metrics"))
    thresholds = (_dict(record.spec.get("evaluation")).get("thresholds")) or []
    checks = []
    for threshold in thresholds:
        if isinstance(threshold, dict) and "metric" in threshold:
            value, limit = _number(metrics.get(threshold["metric"])), _number(threshold.get("min"))
            checks.append({"metric": threshold["metric"], "value": value, "min": limit,
                           "passed": value is not None and limit is not None and value >= limit})
    checked = {c["metric"] for c in checks}
    checks += [{"metric": m, "value": _number(v), "min": None, "passed": None} for m, v in metrics.items() if m not in checked]
    queries = [q for q in report.get("queries") or [] if isinstance(q, dict)]
    missed = [q for q in queries if q.get("rank") is None][:MAX_MISSED_QUERIES]
    facts = {k: outputs.get(k) for k in ("documents", "chunks", "embedder") if k in outputs}
    if "k" in report:
        facts["k"] = report["k"]
    return KnowledgeView(record.name, state, facts, checks, missed, len(queries) if queries else None)


def _guardrail(record: ResourceRecord, reader: _Artifacts, state: str) -> GuardrailView:
    """Its test cases' results: in the record's outputs, else in its guardrail_report.json (same fields)."""
    outputs = record.outputs
    if "checks" not in outputs:
        outputs = {**(reader.json(record, "guardrail_report.json") or {}), **outputs}
    checks = [{"id": str(name), **entry} for name, entry in _dict(outputs.get("checks")).items() if isinstance(entry, dict)]
    return GuardrailView(record.name, state, outputs.get("cases"), outputs.get("passed"),
                         str(outputs.get("policy_sha256") or ""), checks)


def _load_tests(record: ResourceRecord) -> list[dict[str, Any]]:
    runs = record.outputs.get("load_tests")
    return [run for run in runs if isinstance(run, dict)] if isinstance(runs, list) else []


def _latency(engine: Engine, deployment: str, log_lines: int, problems: list[str]) -> list[LatencyGroup]:
    from ..serving.logs import read_logs

    try:
        entries = read_logs(engine.project, deployment, log_lines)
    except LLMOpsError:
        return []  # it has served no request here
    except OSError as exc:
        problems.append(f"request log of {deployment} not readable: {exc}")
        return []
    groups: dict[str, LatencyGroup] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        version = str(entry.get("model_version") or "-")[:64]
        group = groups.pop(version, None) or LatencyGroup(deployment, version, [], 0, 0, {})
        groups[version] = group  # re-inserted: the dict ends in order of each version's latest request
        status = entry.get("status")
        group.requests += 1
        group.status_counts[str(status)[:8]] = group.status_counts.get(str(status)[:8], 0) + 1
        if not (isinstance(status, int) and status < 400):
            group.errors += 1
        latency = _number(entry.get("latency_ms"))
        if latency is not None and latency >= 0:
            group.latencies_ms.append(latency)
    return list(groups.values())[-MAX_VERSIONS:]


def _rollouts(journal: Path, records: dict[str, ResourceRecord], problems: list[str]) -> list[RolloutEvent]:
    events = []
    for deployment, started, status, message, outputs in _deployment_steps(journal, problems):
        outputs = outputs if isinstance(outputs, dict) else {}
        canary = [s for s in outputs.get("canary_analysis") or [] if isinstance(s, dict)]
        event = {"succeeded": "apply", "failed": "failed"}.get(status, status)  # else interrupted, or running now
        events.append(RolloutEvent(
            deployment, started, event, status, str(outputs.get("model_version") or ""),
            str(outputs.get("previous_model_version") or ""), str(outputs.get("strategy") or ""), canary, message or ""))
    for record in records.values():
        rolled_back = _number(record.outputs.get("rolled_back_at")) if record.kind == "Deployment" else None
        if rolled_back is not None:
            outputs = record.outputs
            events.append(RolloutEvent(record.name, rolled_back, "rollback", "succeeded",
                                       str(outputs.get("model_version") or ""),
                                       str(outputs.get("previous_model_version") or ""), "rolling", [],
                                       "llmops rollback"))
    return sorted(events, key=lambda e: e.time, reverse=True)


def _deployment_steps(journal: Path, problems: list[str]) -> list[tuple]:
    """(deployment, started, status, message, outputs) of the newest Deployment steps, read-only."""
    if not journal.is_file():
        return []
    # A WAL database opened even read-only creates its -wal and -shm files when they are absent; they
    # are absent only when every change is in the main file, which can then be read as immutable.
    wal_present = journal.with_name(journal.name + "-wal").exists()
    try:
        with closing(sqlite3.connect(f"{journal.as_uri()}?{'mode=ro' if wal_present else 'immutable=1'}",
                                     uri=True, timeout=5)) as db:
            rows = db.execute(
                "SELECT key, started, status, message, outputs FROM steps WHERE key LIKE 'Deployment/%' "
                "AND action != 'delete' ORDER BY started DESC LIMIT ?", (JOURNAL_ROWS,)).fetchall()
    except sqlite3.Error as exc:
        problems.append(f"journal {journal} not readable: {exc}")
        return []
    steps = []
    for key, started, status, message, outputs in rows:
        try:
            decoded = json.loads(outputs) if outputs else {}
        except ValueError:
            decoded = {}
        steps.append((str(key).split("/", 1)[1], float(started or 0), str(status), str(message or ""), decoded))
    return steps


# type guards for hand-editable JSON ---------------------------------------------------------------

def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _pairs(value: Any) -> list[tuple[float, float]]:
    """[[step, loss], ...] as (float, float) pairs, skipping anything else."""
    pairs = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            x, y = _number(item[0]), _number(item[1])
            if x is not None and y is not None:
                pairs.append((x, y))
    return pairs
