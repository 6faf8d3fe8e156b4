"""The reconciler's front door: observe → plan → (under the apply lock) execute.

`Engine` wires a project to its artifact store, journal and controller registry; the work is
done by `observe.observe` (read-only, returns a serializable `Plan`) and
`execute.Executor.run` (runs exactly a plan's actions). A saved plan is executed only if a
fresh observation, made with the plan's own options, yields the same actions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .controllers import Registry
from .errors import ClusterError, PlanError, StalePlanError
from .execute import ApplyResult, Executor, Reporter
from .observe import Desired, Observation, load_desired, observe
from .planner import Action, Plan, PlanOptions
from .project import Project
from .state.artifacts import ArtifactStore
from .state.journal import Journal
from .state.records import ResourceRecord
from .state.stores import open_store


class Engine:
    def __init__(self, project: Project, report: Reporter = print, registry: Registry | None = None):
        self.project = project
        self.report = report
        self.registry = registry or Registry()
        self._store: ArtifactStore | None = None

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = open_store(self.project)
        return self._store

    def journal(self) -> Journal:
        return Journal(self.project.state_dir / "journal.sqlite")

    def load(self) -> Desired:
        """The specs as they stand, for read-only views (status, report): never queries a database."""
        return load_desired(self.project, query_databases=False)

    def records(self) -> dict[str, ResourceRecord]:
        return self.store.read_records()

    def plan(self, options: PlanOptions = PlanOptions()) -> Observation:
        """Read-only: what apply would do now, and why."""
        return observe(self.project, self.store, self.registry, options)

    def apply(
        self,
        saved_plan: Plan | None = None,
        options: PlanOptions | None = None,
        lock_timeout: float = 0.0,
        before_step: Callable[[Action], None] | None = None,
    ) -> ApplyResult:
        """Reconcile now (`options`), or execute `saved_plan` if the world still matches it."""
        if saved_plan is not None and options is not None and options != saved_plan.options:
            raise PlanError(_options_mismatch(saved_plan.options, options))
        lock = self.store.lock(self.project.settings.lock_ttl_s)
        lock.acquire(timeout_s=lock_timeout)
        try:
            self._restore_raw_data()
            observation = self.plan(saved_plan.options if saved_plan else options or PlanOptions())
            if saved_plan is not None:
                # Same options, same digests, same actions: the fresh plan is the reviewed one.
                # Running it (not the file) means nothing edited into the file is trusted.
                check_fresh(saved_plan, observation.plan)
            _refuse_throwaway_deploys(self.project, observation.plan, observation.desired)
            executor = Executor(self.project, self.store, self.registry, self.journal(), self.report)
            result = executor.run(observation.plan, observation.desired, observation.records, before_step)
            if note := self.store.write_index():
                self.report(note)
            return result
        finally:
            lock.release()

    def _restore_raw_data(self) -> None:
        """A fresh clone has DVC records but no data yet: restoring it is apply's job, not plan's."""
        from .data.bootstrap import ensure_raw_data

        for path in ensure_raw_data(self.project.root):
            self.report(f"restored {path} from its DVC record")


def _refuse_throwaway_deploys(project: Project, plan: Plan, desired: Desired) -> None:
    from .raycluster import throwaway_deploy_refusal

    deploying = [a.key for a in plan.actions if a.action in ("create", "update")
                 and desired.by_key[a.key].spec.keeps_running]
    if refusal := throwaway_deploy_refusal(deploying, project.ray_address(), os.environ):
        raise ClusterError(refusal)


def _options_mismatch(saved: PlanOptions, given: PlanOptions) -> str:
    flags = ", ".join(saved.differences(given))
    return (
        f"the saved plan was made with different options ({flags}); `llmops apply PLAN` runs a plan "
        "exactly as reviewed. Make a new plan with the options you want: llmops plan --out PLAN [flags]"
    )


def check_fresh(saved: Plan, current: Plan) -> None:
    if saved.observed_digest != current.observed_digest:
        raise StalePlanError("the saved plan is stale: the observed state changed since it was made; run llmops plan again")
    if saved.desired_digest != current.desired_digest:
        raise StalePlanError("the saved plan is stale: the specs or their data changed since it was made; run llmops plan again")
    if [a.identity for a in saved.actions] != [a.identity for a in current.actions]:
        raise StalePlanError("the saved plan is stale: its actions differ from what apply would do now; run llmops plan again")


def read_plan_file(path: Path) -> Plan:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PlanError(f"plan file {path} not found; create it with llmops plan --out {path}") from exc
    except (OSError, ValueError) as exc:
        raise PlanError(f"plan file {path} is not a readable JSON plan: {exc}") from exc
    return Plan.from_json(data)
