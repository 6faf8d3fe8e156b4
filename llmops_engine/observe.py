"""Observation: what the specs want, what the store and the live world hold, and the plan.

`observe()` is what `llmops plan`, `status` and the start of every `apply` call. It is
read-only: it loads specs (Dataset SQL is parsed by DuckDB in a subprocess, answers cached
under the state dir), hashes input files (keeping a size/mtime cache there too), runs a
database source's query where its refresh policy says so (the extract lands under the state
dir: data/extracts.py), reads resource records from the artifact store and asks each kind's
controller for cheap live observations (plain HTTP, no heavy imports). It never restores data,
writes outside the state dir, or runs a writing DVC or git command; then the pure planner decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from .controllers import Registry
from .errors import LiveStateUnknown, NoControllerError, PlanError
from .fingerprint import ContentHasher, fingerprint_all
from .graph import dependencies, topological_order
from .planner import DesiredResource, ObservedResource, Plan, PlanOptions, make_plan
from .project import Project
from .specs.resource import Resource
from .state.artifacts import ArtifactStore
from .state.records import ResourceRecord


@dataclass
class Desired:
    by_key: dict[str, Resource]
    order: list[str]
    fingerprints: dict[str, str]
    inputs: dict[str, dict[str, str]]
    notes: dict[str, tuple[str, ...]]

    def planned(self) -> list[DesiredResource]:
        items = []
        for key in self.order:
            resource = self.by_key[key]
            deps = {d: self.fingerprints[d] for d in dependencies(resource) if d in self.fingerprints}
            items.append(
                DesiredResource(
                    key, resource.kind, resource.name, self.fingerprints[key],
                    resource.normalized_spec(), deps, self.inputs[key], self.notes.get(key, ()),
                )
            )
        return items


@dataclass
class Observation:
    plan: Plan
    desired: Desired
    records: dict[str, ResourceRecord]


def load_desired(project: Project, query_databases: bool = True) -> Desired:
    """The specs, their fingerprints and inputs. `query_databases`: run a database source's query
    where its refresh policy says so (plan, apply), or only read its last extract (status)."""
    resources = project.load_resources()
    by_key = {r.key: r for r in resources}
    order = topological_order(by_key)
    hasher = ContentHasher(project.root, project.state_dir / "hash-cache.json", project.engine_dirs())
    observed, notes = _database_inputs(resources, project, query_databases)
    fingerprints, inputs = fingerprint_all(by_key, order, hasher, observed)
    return Desired(by_key, order, fingerprints, inputs, notes)


def _database_inputs(resources: list[Resource], project: Project, query: bool):
    """A database source's extract (data/extracts.py): made or found here, named by its hash."""
    if not any(r.kind == "Dataset" and r.spec.source.kind() == "database" for r in resources):
        return {}, {}
    from .data.extracts import observe_database

    inputs, notes = {}, {}
    for resource in resources:
        found = observe_database(resource, project.state_dir, query)
        if found is not None:
            inputs[resource.key], notes[resource.key] = found.inputs, (found.note,)
    return inputs, notes


def observe(project: Project, store: ArtifactStore, registry: Registry, options: PlanOptions) -> Observation:
    desired = load_desired(project)
    if options.prune and not desired.by_key and not options.allow_empty:
        raise PlanError("the spec set is empty; refusing to prune everything (pass --allow-empty to do it)")
    records = store.read_records()
    observed = {key: _observed(record, project, store, registry) for key, record in records.items()}
    return Observation(make_plan(desired.planned(), observed, options), desired, records)


def _observed(record: ResourceRecord, project: Project, store: ArtifactStore, registry: Registry) -> ObservedResource:
    drift, unknown = None, None
    try:
        drift = _drift(record, project, store, registry)
    except LiveStateUnknown as exc:
        unknown = str(exc)
    return ObservedResource(
        record.key, record.fingerprint, record.spec, record.dependencies, record.inputs,
        record.status, record.message, drift, unknown, last_run(record),
    )


def _drift(record: ResourceRecord, project: Project, store: ArtifactStore, registry: Registry) -> str | None:
    if not store.has(record.fingerprint):
        return "published outputs are missing from the artifact store"
    try:
        controller = registry.controller_for(record.kind)
    except NoControllerError:
        return None
    return controller.observe(record, project)


def last_run(record: ResourceRecord) -> str | None:
    """'last run 1 m 27 s on 1 worker × 2 CPU' — what redoing this step cost last time."""
    if record.run_seconds is None:
        return None
    seconds = round(record.run_seconds)
    took = f"{seconds // 60} m {seconds % 60} s" if seconds >= 60 else f"{record.run_seconds:.1f} s"
    return f"last run {took}" + (f" on {record.resources}" if record.resources else "")
