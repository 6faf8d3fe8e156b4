"""The planner: a pure function of (desired, observed) → ordered actions with reasons.

Nothing here touches disk, network or clocks, which is what makes the scenario-table
tests in tests/test_planner.py possible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from .fingerprint import canonical_json

ActionType = Literal["create", "update", "no-op", "delete"]


@dataclass(frozen=True)
class DesiredResource:
    key: str
    kind: str
    name: str
    fingerprint: str
    spec: dict[str, Any]
    dependencies: dict[str, str]
    inputs: dict[str, str]


@dataclass(frozen=True)
class ObservedResource:
    key: str
    fingerprint: str
    spec: dict[str, Any]
    dependencies: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    status: str = "ready"
    message: str = ""
    drift: str | None = None


@dataclass(frozen=True)
class Action:
    key: str
    action: ActionType
    reasons: tuple[str, ...]
    fingerprint: str | None
    previous_fingerprint: str | None = None

    @property
    def kind(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split("/", 1)[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "reasons": list(self.reasons),
            "fingerprint": self.fingerprint,
            "previous_fingerprint": self.previous_fingerprint,
        }


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    observed_digest: str
    desired_digest: str
    orphans: tuple[str, ...] = ()

    @property
    def changes(self) -> list[Action]:
        return [a for a in self.actions if a.action != "no-op"]

    def has_changes(self) -> bool:
        return bool(self.changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "observed_digest": self.observed_digest,
            "desired_digest": self.desired_digest,
            "actions": [a.to_json() for a in self.actions],
            "orphans": list(self.orphans),
        }


def make_plan(desired: list[DesiredResource], observed: dict[str, ObservedResource], prune: bool = False) -> Plan:
    """`desired` must be in dependency order (dependencies first)."""
    actions: list[Action] = []
    changing: set[str] = set()
    for resource in desired:
        action = _decide(resource, observed.get(resource.key), changing)
        if action.action != "no-op":
            changing.add(resource.key)
        actions.append(action)
    wanted = {r.key for r in desired}
    orphans = tuple(sorted(key for key in observed if key not in wanted))
    if prune:
        for key in reversed(orphans):
            old = observed[key]
            actions.append(Action(key, "delete", ("removed from specs",), None, old.fingerprint))
    return Plan(tuple(actions), digest_observed(observed), digest_desired(desired), () if prune else orphans)


def _decide(resource: DesiredResource, old: ObservedResource | None, changing: set[str]) -> Action:
    if old is None:
        return Action(resource.key, "create", ("not applied yet",), resource.fingerprint)
    reasons = _reasons(resource, old, changing)
    if not reasons:
        return Action(resource.key, "no-op", (), resource.fingerprint, old.fingerprint)
    return Action(resource.key, "update", tuple(reasons), resource.fingerprint, old.fingerprint)


def _reasons(resource: DesiredResource, old: ObservedResource, changing: set[str]) -> list[str]:
    reasons: list[str] = []
    if old.fingerprint != resource.fingerprint:
        reasons += [f"spec changed at spec.{path}" for path in diff_paths(old.spec, resource.spec)]
        reasons += _input_reasons(old.inputs, resource.inputs)
        for dep, fp in sorted(resource.dependencies.items()):
            if dep in changing or old.dependencies.get(dep) != fp:
                kind, name = dep.split("/", 1)
                reasons.append(f"upstream {kind.lower()} {name} changed")
        if not reasons:
            reasons.append("engine fingerprint format changed")
    if old.status != "ready":
        reasons.append(f"last apply {old.status}: {old.message}" if old.message else f"last apply {old.status}")
    if old.drift:
        reasons.append(f"live app differs: {old.drift}")
    return reasons


def _input_reasons(old: dict[str, str], new: dict[str, str]) -> list[str]:
    changed = sorted(path for path in set(old) | set(new) if old.get(path) != new.get(path))
    return [
        f"environment changed: {path[4:]}" if path.startswith("env:") else f"data changed: {path}"
        for path in changed
    ]


def diff_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ, as specific as the structures allow."""
    if isinstance(old, dict) and isinstance(new, dict):
        paths: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                paths.append(sub)
            else:
                paths += diff_paths(old[key], new[key], sub)
        return paths
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        paths = []
        for i, (a, b) in enumerate(zip(old, new)):
            paths += diff_paths(a, b, f"{prefix}.{i}" if prefix else str(i))
        return paths
    return [] if old == new else [prefix or "(root)"]


def digest_observed(observed: dict[str, ObservedResource]) -> str:
    summary = {k: [o.fingerprint, o.status, o.drift] for k, o in sorted(observed.items())}
    return hashlib.sha256(canonical_json(summary).encode()).hexdigest()


def digest_desired(desired: list[DesiredResource]) -> str:
    summary = {r.key: r.fingerprint for r in desired}
    return hashlib.sha256(canonical_json(summary).encode()).hexdigest()
