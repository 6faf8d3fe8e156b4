"""Execution: run a plan's actions, in order, with the controllers the registry gives.

Each step is journaled (intent before, outcome after); a controller writes only into a
staging directory that is published under the resource's fingerprint once it succeeds, so a
failure leaves every previously published output and record as it was. A failed step blocks
exactly the actions whose `requires` name it (dependents of an update, dependencies of a
delete) — the plan decided that, not this module.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .controllers import ApplyContext, Registry
from .errors import ControllerError, LLMOpsError, RolloutFailed
from .graph import dependencies
from .internal import log_internal_error, one_line
from .observe import Desired
from .planner import Action, Plan, blockers
from .project import Project
from .specs.resource import Resource
from .state.artifacts import ArtifactStore
from .state.journal import Journal
from .state.records import ResourceRecord

Reporter = Callable[[str], None]


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


@dataclass
class Executor:
    project: Project
    store: ArtifactStore
    registry: Registry
    journal: Journal
    report: Reporter = print

    def run(
        self, plan: Plan, desired: Desired, records: dict[str, ResourceRecord],
        before_step: Callable[[Action], None] | None = None,
    ) -> ApplyResult:
        apply_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        for row in self.journal.interrupted_steps():
            self.report(f"resuming: apply {row.apply_id} was interrupted during {row.action} {row.key}")
        self.journal.begin_apply(apply_id, "apply")
        self.journal.close_interrupted(apply_id)
        ctx = ApplyContext(self.project, self.store, desired.by_key, desired.fingerprints, records, self.report,
                           inputs=desired.inputs)
        result = ApplyResult(apply_id)
        broken: set[str] = set()
        for action in plan.actions:
            if before_step is not None:
                before_step(action)
            step = self._step(action, desired, records, ctx, apply_id, broken)
            result.steps.append(step)
            if step.status in ("failed", "blocked"):
                broken.add(action.key)
        self.journal.finish_apply(apply_id, "failed" if result.failed else "succeeded")
        return result

    def _step(self, action: Action, desired: Desired, records, ctx: ApplyContext, apply_id: str, broken) -> StepResult:
        if action.action == "no-op":
            ctx.outputs[action.key] = records[action.key].outputs
            return StepResult(action.key, "no-op", "skipped")
        if blocking := blockers(action, broken):
            return StepResult(action.key, action.action, "blocked", f"blocked: {', '.join(blocking)} failed")
        if action.action == "delete":
            return self._delete(action, records[action.key], ctx, apply_id)
        return self._reconcile(action, desired.by_key[action.key], desired, records, ctx, apply_id)

    def _reconcile(self, action: Action, resource: Resource, desired: Desired, records, ctx, apply_id) -> StepResult:
        started = time.monotonic()
        fingerprint = action.fingerprint
        self.journal.step_started(apply_id, action.key, action.action, fingerprint)
        self.report(f"{'+' if action.action == 'create' else '~'} {action.key}: {'; '.join(action.reasons)}")
        staging: Path | None = None
        try:
            controller = self.registry.controller_for(resource.kind)
            staging = self.store.staging_dir(fingerprint)
            outputs = controller.apply(resource, ctx, staging)
            self.store.publish(fingerprint, staging)
        except Exception as exc:  # noqa: BLE001 - every failure is journaled, then mapped below
            if staging is not None:
                self.store.discard(staging)
            error = exc if isinstance(exc, LLMOpsError) else self._internal_error(action.key, exc)
            self._mark_failed(records.get(action.key), error)
            self.journal.step_finished(apply_id, action.key, "failed", str(error))
            return StepResult(action.key, action.action, "failed", str(error), time.monotonic() - started, error)
        seconds = time.monotonic() - started
        record = ResourceRecord(
            kind=resource.kind, name=resource.name, fingerprint=fingerprint,
            spec=resource.normalized_spec(),
            dependencies={d: desired.fingerprints[d] for d in dependencies(resource)},
            inputs=desired.inputs[action.key], outputs=outputs, status="ready",
            applied_at=time.time(), apply_id=apply_id,
            run_seconds=round(seconds, 1), resources=resource.spec.resource_summary(),
        )
        self.store.write_record(record)
        records[action.key] = record
        ctx.outputs[action.key] = outputs
        self.journal.step_finished(apply_id, action.key, "succeeded", outputs=outputs)
        return StepResult(action.key, action.action, "succeeded", "", seconds)

    def _mark_failed(self, record: ResourceRecord | None, error: LLMOpsError) -> None:
        """Keep the last good outputs, but say on the record that the latest apply failed."""
        if record is None:
            return
        status = "degraded" if isinstance(error, RolloutFailed) else "failed"
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.store.write_record(record.model_copy(update={"status": status, "message": first_line[:300]}))

    def _internal_error(self, key: str, exc: Exception) -> ControllerError:
        log = log_internal_error(self.project.state_dir, exc)
        error = ControllerError(f"internal error while applying {key}: {one_line(exc)} (traceback: {log})")
        error.__cause__ = exc
        return error

    def _delete(self, action: Action, record: ResourceRecord, ctx: ApplyContext, apply_id: str) -> StepResult:
        self.journal.step_started(apply_id, action.key, "delete", record.fingerprint)
        self.report(f"- {action.key}: {'; '.join(action.reasons)}")
        try:
            self.registry.controller_for(record.kind).delete(record, ctx)
        except Exception as exc:  # noqa: BLE001 - as in _reconcile
            error = exc if isinstance(exc, LLMOpsError) else self._internal_error(action.key, exc)
            self.journal.step_finished(apply_id, action.key, "failed", str(error))
            return StepResult(action.key, "delete", "failed", str(error), error=error)
        self.store.delete_record(record.kind, record.name)
        self.journal.step_finished(apply_id, action.key, "succeeded")
        return StepResult(action.key, "delete", "succeeded")
