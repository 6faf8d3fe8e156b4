"""The reconciler: load specs → fingerprint → observe → plan → apply.

`plan` and the load/observe steps never import a heavy library; `apply` hands each
resource to its kind's controller, journaling intent before and outcome after, and
publishing outputs only when a step succeeds.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import controllers
from .errors import ControllerError, LLMOpsError, NoControllerError, PlanError, StalePlanError
from .fingerprint import ContentHasher, fingerprint_all
from .graph import dependencies, topological_order
from .planner import Action, DesiredResource, ObservedResource, Plan, make_plan
from .project import Project
from .specs.loader import load_resources
from .specs.resource import Resource
from .state.artifacts import ArtifactStore, open_store
from .state.journal import Journal
from .state.records import ResourceRecord

Reporter = Callable[[str], None]


@dataclass
class Desired:
    by_key: dict[str, Resource]
    order: list[str]
    fingerprints: dict[str, str]
    inputs: dict[str, dict[str, str]]

    def planned(self) -> list[DesiredResource]:
        items = []
        for key in self.order:
            resource = self.by_key[key]
            deps = {d: self.fingerprints[d] for d in dependencies(resource) if d in self.fingerprints}
            items.append(
                DesiredResource(
                    key, resource.kind, resource.name, self.fingerprints[key],
                    resource.normalized_spec(), deps, self.inputs[key],
                )
            )
        return items


@dataclass
class StepResult:
    key: str
    action: str
    status: str  # succeeded | failed | blocked | skipped
    message: str = ""
    seconds: float = 0.0
    error: LLMOpsError | None = None


@dataclass
class ApplyResult:
    apply_id: str
    steps: list[StepResult] = field(default_factory=list)

    @property
    def failed(self) -> list[StepResult]:
        return [s for s in self.steps if s.status in ("failed", "blocked")]

    def exit_code(self) -> int:
        errors = [s.error for s in self.steps if s.error is not None]
        if not errors:
            return 1 if self.failed else 0
        return max(e.exit_code for e in errors)


class Engine:
    def __init__(self, project: Project, report: Reporter = print):
        self.project = project
        self.report = report
        self._store: ArtifactStore | None = None

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = open_store(self.project)
        return self._store

    def journal(self) -> Journal:
        return Journal(self.project.state_dir / "journal.sqlite")

    # load / observe / plan -------------------------------------------------
    def load(self) -> Desired:
        resources = load_resources(self.project.root, self.project.settings.spec_dirs)
        self._restore_raw_data()
        by_key = {r.key: r for r in resources}
        order = topological_order(by_key)
        hasher = ContentHasher(self.project.root, self.project.state_dir / "hash-cache.json")
        fingerprints, inputs = fingerprint_all(by_key, order, hasher)
        return Desired(by_key, order, fingerprints, inputs)

    def _restore_raw_data(self) -> None:
        """A fresh clone has DVC records but no data yet; fingerprints must hash the real files."""
        from .data.bootstrap import ensure_raw_data

        for path in ensure_raw_data(self.project.root):
            self.report(f"restored {path} from its DVC record")

    def records(self) -> dict[str, ResourceRecord]:
        return self.store.read_records()

    def observe(self, records: dict[str, ResourceRecord]) -> dict[str, ObservedResource]:
        observed = {}
        for key, record in records.items():
            observed[key] = ObservedResource(
                key, record.fingerprint, record.spec, record.dependencies, record.inputs,
                record.status, record.message, self._drift(record),
            )
        return observed

    def _drift(self, record: ResourceRecord) -> str | None:
        if not self.store.has(record.fingerprint):
            return "published outputs are missing from the artifact store"
        try:
            controller = controllers.controller_for(record.kind)
        except NoControllerError:
            return None
        return controller.observe(record, self.project)

    def plan(self, prune: bool = False, allow_empty: bool = False) -> tuple[Plan, Desired, dict[str, ResourceRecord]]:
        desired = self.load()
        if prune and not desired.by_key and not allow_empty:
            raise PlanError("the spec set is empty; refusing to prune everything (pass --allow-empty to do it)")
        records = self.records()
        plan = make_plan(desired.planned(), self.observe(records), prune=prune)
        return plan, desired, records

    # apply -----------------------------------------------------------------
    def apply(
        self,
        saved_plan: dict | None = None,
        prune: bool = False,
        allow_empty: bool = False,
        lock_timeout: float = 0.0,
        before_step: Callable[[Action], None] | None = None,
    ) -> ApplyResult:
        lock = self.store.lock(self.project.settings.lock_ttl_s)
        lock.acquire(timeout_s=lock_timeout)
        try:
            plan, desired, records = self.plan(prune=prune, allow_empty=allow_empty)
            if saved_plan is not None:
                _check_fresh(saved_plan, plan)
                prune = any(a["action"] == "delete" for a in saved_plan.get("actions", []))
            result = self._run(plan, desired, records, before_step)
            if note := self.store.write_index():
                self.report(note)
            return result
        finally:
            lock.release()

    def _run(self, plan: Plan, desired: Desired, records, before_step) -> ApplyResult:
        journal = self.journal()
        apply_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        for row in journal.interrupted_steps():
            self.report(f"resuming: apply {row.apply_id} was interrupted during {row.action} {row.key}")
        journal.begin_apply(apply_id, "apply")
        journal.close_interrupted(apply_id)
        ctx = controllers.ApplyContext(
            self.project, self.store, desired.by_key, desired.fingerprints, records, self.report
        )
        result = ApplyResult(apply_id)
        broken: set[str] = set()
        for action in plan.actions:
            if before_step is not None:
                before_step(action)
            step = self._step(action, desired, records, ctx, journal, apply_id, broken)
            result.steps.append(step)
            if step.status in ("failed", "blocked"):
                broken.add(action.key)
        journal.finish_apply(apply_id, "failed" if result.failed else "succeeded")
        return result

    def _step(self, action: Action, desired: Desired, records, ctx, journal, apply_id, broken) -> StepResult:
        if action.action == "no-op":
            ctx.outputs[action.key] = records[action.key].outputs
            return StepResult(action.key, "no-op", "skipped")
        if action.action == "delete":
            return self._delete(action, records[action.key], ctx, journal, apply_id)
        resource = desired.by_key[action.key]
        blockers = [d for d in dependencies(resource) if d in broken]
        if blockers:
            return StepResult(action.key, action.action, "blocked", f"blocked: {', '.join(blockers)} failed")
        return self._reconcile(action, resource, desired, records, ctx, journal, apply_id)

    def _reconcile(self, action, resource, desired, records, ctx, journal, apply_id) -> StepResult:
        started = time.monotonic()
        fingerprint = action.fingerprint
        journal.step_started(apply_id, action.key, action.action, fingerprint)
        self.report(f"{'+' if action.action == 'create' else '~'} {action.key}: {'; '.join(action.reasons)}")
        staging: Path | None = None
        try:
            controller = controllers.controller_for(resource.kind)
            staging = self.store.staging_dir(fingerprint)
            outputs = controller.apply(resource, ctx, staging)
            self.store.publish(fingerprint, staging)
        except Exception as exc:  # noqa: BLE001 - every failure is journaled, then mapped below
            if staging is not None:
                self.store.discard(staging)
            error = exc if isinstance(exc, LLMOpsError) else self._internal_error(action.key, exc)
            self._mark_failed(records.get(action.key), error)
            journal.step_finished(apply_id, action.key, "failed", str(error))
            return StepResult(action.key, action.action, "failed", str(error), time.monotonic() - started, error)
        record = ResourceRecord(
            kind=resource.kind, name=resource.name, fingerprint=fingerprint,
            spec=resource.normalized_spec(),
            dependencies={d: desired.fingerprints[d] for d in dependencies(resource)},
            inputs=desired.inputs[action.key], outputs=outputs, status="ready",
            applied_at=time.time(), apply_id=apply_id,
        )
        self.store.write_record(record)
        records[action.key] = record
        ctx.outputs[action.key] = outputs
        journal.step_finished(apply_id, action.key, "succeeded", outputs=outputs)
        return StepResult(action.key, action.action, "succeeded", "", time.monotonic() - started)

    def _mark_failed(self, record: ResourceRecord | None, error: LLMOpsError) -> None:
        """Keep the last good outputs, but say on the record that the latest apply failed."""
        if record is None:
            return
        from .errors import RolloutFailed

        status = "degraded" if isinstance(error, RolloutFailed) else "failed"
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.store.write_record(record.model_copy(update={"status": status, "message": first_line[:300]}))

    def _internal_error(self, key: str, exc: Exception) -> ControllerError:
        log = self.project.state_dir / "logs" / f"internal-{int(time.time())}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(traceback.format_exception(exc)))
        error = ControllerError(f"internal error while applying {key}: {type(exc).__name__}: {exc} (traceback: {log})")
        error.__cause__ = exc
        return error

    def _delete(self, action, record: ResourceRecord, ctx, journal, apply_id) -> StepResult:
        journal.step_started(apply_id, action.key, "delete", record.fingerprint)
        self.report(f"- {action.key}: {'; '.join(action.reasons)}")
        try:
            controllers.controller_for(record.kind).delete(record, ctx)
        except LLMOpsError as error:
            journal.step_finished(apply_id, action.key, "failed", str(error))
            return StepResult(action.key, "delete", "failed", str(error), error=error)
        self.store.delete_record(record.kind, record.name)
        journal.step_finished(apply_id, action.key, "succeeded")
        return StepResult(action.key, "delete", "succeeded")


def _check_fresh(saved: dict, current: Plan) -> None:
    if saved.get("format") != 1:
        raise PlanError("the saved plan was written by another llmops version; run llmops plan again")
    if saved.get("observed_digest") != current.observed_digest:
        raise StalePlanError("the saved plan is stale: the observed state changed since it was made; run llmops plan again")
    if saved.get("desired_digest") != current.desired_digest:
        raise StalePlanError("the saved plan is stale: the specs or their data changed since it was made; run llmops plan again")


def read_plan_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PlanError(f"plan file {path} not found; create it with llmops plan --out {path}") from exc
    except ValueError as exc:
        raise PlanError(f"plan file {path} is not valid JSON: {exc}") from exc
