"""The planner: a pure function of (desired, observed, options) → ordered actions with reasons.

Nothing here touches disk, network or clocks, which is what makes the scenario-table
tests in tests/test_planner.py possible. The `Plan` it returns is the contract between
`llmops plan` and `llmops apply`: it carries the options it was made with, serializes to
JSON, and its digest covers all of it, so a saved plan is executed exactly as reviewed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import PlanError
from .fingerprint import canonical_json

ActionType = Literal["create", "update", "no-op", "delete"]
PLAN_FORMAT = 2
VALUE_WIDTH = 40


@dataclass(frozen=True)
class PlanOptions:
    """Every flag that changes what a plan contains; stored in the plan and in its digest."""

    prune: bool = False
    allow_empty: bool = False
    targets: tuple[str, ...] = ()  # keys (Kind/name): only their actions and their dependencies'

    def __post_init__(self) -> None:
        # Sorted and unique, so `--target a --target b` and `--target b --target a` make one plan.
        object.__setattr__(self, "targets", tuple(sorted(set(self.targets))))

    def to_json(self) -> dict[str, Any]:
        # `targets` only when given: plans saved before it existed keep their digest.
        return {"prune": self.prune, "allow_empty": self.allow_empty} | (
            {"targets": list(self.targets)} if self.targets else {})

    def flags(self) -> list[str]:
        """The command-line flags that make these options."""
        return ((["--prune"] if self.prune else []) + (["--allow-empty"] if self.allow_empty else [])
                + [f"--target {key}" for key in self.targets])

    def differences(self, other: "PlanOptions") -> list[str]:
        return sorted(set(self.flags()) ^ set(other.flags()))


@dataclass(frozen=True)
class DesiredResource:
    key: str
    kind: str
    name: str
    fingerprint: str
    spec: dict[str, Any]
    dependencies: dict[str, str]
    inputs: dict[str, str]
    notes: tuple[str, ...] = ()  # what observation found worth saying (a database source's extract)


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
    live_unknown: str | None = None   # why live state could not be observed (not drift)
    cost: str | None = None           # "last run 1 m 27 s on 2 CPUs", from the record


@dataclass(frozen=True)
class Action:
    key: str
    action: ActionType
    reasons: tuple[str, ...]
    fingerprint: str | None
    previous_fingerprint: str | None = None
    requires: tuple[str, ...] = ()    # keys whose failure in this apply blocks this action
    notes: tuple[str, ...] = ()       # shown to the reviewer; never a reason to act
    cost: str | None = None

    @property
    def kind(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split("/", 1)[1]

    @property
    def identity(self) -> tuple:
        """What must not change between a reviewed plan and its execution."""
        return self.key, self.action, self.fingerprint, self.requires

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "reasons": list(self.reasons),
            "fingerprint": self.fingerprint,
            "previous_fingerprint": self.previous_fingerprint,
            "requires": list(self.requires),
            "notes": list(self.notes),
            "cost": self.cost,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Action":
        return cls(
            data["key"], data["action"], tuple(data["reasons"]), data["fingerprint"], data["previous_fingerprint"],
            tuple(data["requires"]), tuple(data["notes"]), data["cost"],
        )


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    observed_digest: str
    desired_digest: str
    orphans: tuple[str, ...] = ()
    options: PlanOptions = PlanOptions()

    @property
    def changes(self) -> list[Action]:
        return [a for a in self.actions if a.action != "no-op"]

    def has_changes(self) -> bool:
        return bool(self.changes)

    def _body(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "options": self.options.to_json(),
            "observed_digest": self.observed_digest,
            "desired_digest": self.desired_digest,
            "actions": [a.to_json() for a in self.actions],
            "orphans": list(self.orphans),
        }

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self._body()).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return self._body() | {"digest": self.digest}

    @classmethod
    def from_json(cls, data: Any) -> "Plan":
        """A saved plan, refused unless it is this format and its digest matches its content."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanError("the saved plan was written by another llmops version; run llmops plan again")
        try:
            plan = cls(
                tuple(Action.from_json(a) for a in data["actions"]),
                data["observed_digest"], data["desired_digest"], tuple(data["orphans"]),
                PlanOptions(**data["options"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"the saved plan is malformed ({type(exc).__name__}: {exc}); run llmops plan again") from exc
        if plan.digest != data.get("digest"):
            raise PlanError("the saved plan was modified after it was made (digest mismatch); run llmops plan again")
        return plan


def make_plan(
    desired: list[DesiredResource], observed: dict[str, ObservedResource], options: PlanOptions = PlanOptions()
) -> Plan:
    """`desired` must be in dependency order (dependencies first)."""
    actions: list[Action] = []
    changing: set[str] = set()
    for resource in desired:
        action = _decide(resource, observed.get(resource.key), changing)
        if action.action != "no-op":
            changing.add(resource.key)
        actions.append(action)
    wanted = {r.key for r in desired}
    orphans = {key: old for key, old in observed.items() if key not in wanted}
    if options.prune:
        actions += _deletes(orphans)
    if options.targets:
        actions = _targeted(actions, options.targets, set(orphans))
    deleted = {a.key for a in actions if a.action == "delete"}
    leftover = tuple(sorted(set(orphans) - deleted))
    return Plan(tuple(actions), digest_observed(observed), digest_desired(desired), leftover, options)


def _targeted(actions: list[Action], targets: tuple[str, ...], orphans: set[str]) -> list[Action]:
    """The actions of `targets` and of everything they require, transitively (what a create or
    update depends on; for a delete, the deletes of its dependents), in plan order."""
    by_key = {a.key: a for a in actions}
    unknown = [key for key in targets if key not in by_key]
    if unknown:
        known = ", ".join(sorted(by_key)) or "none"
        hint = " (not in the specs: add --prune to delete it)" if set(unknown) <= orphans else ""
        raise PlanError(f"unknown --target {', '.join(unknown)}{hint}; the plan's resources are: {known}")
    kept: set[str] = set()
    pending = list(targets)
    while pending:
        key = pending.pop()
        if key not in kept:
            kept.add(key)
            pending += [dep for dep in by_key[key].requires if dep in by_key]
    return [a for a in actions if a.key in kept]


def _decide(resource: DesiredResource, old: ObservedResource | None, changing: set[str]) -> Action:
    requires = tuple(sorted(resource.dependencies))
    if old is None:
        return Action(resource.key, "create", ("not applied yet",), resource.fingerprint, requires=requires,
                      notes=resource.notes)
    reasons = _reasons(resource, old, changing)
    notes = resource.notes + ((f"live state unknown: {old.live_unknown}",) if old.live_unknown else ())
    if not reasons:
        return Action(resource.key, "no-op", (), resource.fingerprint, old.fingerprint, requires, notes)
    return Action(resource.key, "update", tuple(reasons), resource.fingerprint, old.fingerprint, requires, notes, old.cost)


def _reasons(resource: DesiredResource, old: ObservedResource, changing: set[str]) -> list[str]:
    reasons: list[str] = []
    if old.fingerprint != resource.fingerprint:
        reasons += spec_changes(old.spec, resource.spec)
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


def _deletes(orphans: dict[str, ObservedResource]) -> list[Action]:
    """Deletes in reverse dependency order: a resource goes only after everything that used it.

    Each delete requires the deletes of its dependents, so a failed one blocks the deletion of
    what it still depends on."""
    dependents = {key: sorted(k for k, o in orphans.items() if key in o.dependencies) for key in orphans}
    order: list[str] = []
    remaining = set(orphans)
    while remaining:
        ready = sorted(k for k in remaining if not set(dependents[k]) & remaining)
        if not ready:  # a cycle among records cannot come from valid specs; keep a stable order
            ready = sorted(remaining)
        order += ready
        remaining -= set(ready)
    return [
        Action(key, "delete", ("removed from specs",), None, orphans[key].fingerprint, tuple(dependents[key]))
        for key in order
    ]


def blockers(action: Action, failed: set[str]) -> list[str]:
    """The keys among `failed` (failed or blocked earlier in this apply) that block `action`."""
    return [key for key in action.requires if key in failed]


def _input_reasons(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One reason per input file (a document, a data file) or environment variable that differs."""
    changed = sorted(path for path in set(old) | set(new) if old.get(path) != new.get(path))
    return [f"environment changed: {path[4:]}" if path.startswith("env:")
            else f"database extract changed: ${path[9:]}" if path.startswith("database:")
            else f"data {_how(path, old, new)}: {path}"
            for path in changed]


def _how(path: str, old: dict[str, str], new: dict[str, str]) -> str:
    if "missing" in (old.get(path), new.get(path)):  # a pattern that matched nothing (fingerprint.py)
        return "changed"
    return "added" if path not in old else "removed" if path not in new else "changed"


_UNSET = object()


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'spec changed at spec.training.epochs: 10 → 12' for each differing path."""
    return [
        f"spec changed at spec.{path}: {show_value(_at(old, path))} → {show_value(_at(new, path))}"
        for path in diff_paths(old, new)
    ]


def _at(value: Any, path: str) -> Any:
    if path == "(root)":
        return value
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _UNSET
    return value


def show_value(value: Any) -> str:
    if value is _UNSET:
        return "(unset)"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"


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
