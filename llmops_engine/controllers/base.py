"""The small interface between the reconciler and the per-kind controllers.

A controller turns one resource into outputs. It writes files only under the staging
directory the context gives it; the reconciler publishes that directory under the
resource's fingerprint once `apply` returns, so a failure leaves every previously
published output untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..project import Project
from ..specs.resource import Resource
from ..state.artifacts import ArtifactStore
from ..state.records import ResourceRecord

Outputs = dict[str, Any]


@dataclass
class ApplyContext:
    project: Project
    store: ArtifactStore
    resources: dict[str, Resource]
    fingerprints: dict[str, str]
    records: dict[str, ResourceRecord]
    report: Callable[[str], None] = print
    outputs: dict[str, Outputs] = field(default_factory=dict)
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)  # by key: what the fingerprint hashed

    @property
    def root(self) -> Path:
        return self.project.root

    def fingerprint(self, key: str) -> str:
        return self.fingerprints[key]

    def outputs_of(self, key: str) -> Outputs:
        """Outputs of a dependency applied in this run or earlier."""
        if key in self.outputs:
            return self.outputs[key]
        record = self.records.get(key)
        if record is None or record.fingerprint != self.fingerprints.get(key):
            raise KeyError(f"{key} has no outputs for its current fingerprint; apply it first")
        return record.outputs

    def artifact_dir(self, key: str) -> Path:
        """Published output directory of a dependency (by its current fingerprint)."""
        return self.store.local_path(self.fingerprints[key])


class Controller(Protocol):
    kind: str

    def apply(self, resource: Resource, ctx: ApplyContext, staging: Path) -> Outputs:
        """Make the world match `resource`; write artifacts under `staging`; return outputs."""

    def delete(self, record: ResourceRecord, ctx: ApplyContext) -> None:
        """Remove what `apply` created for a resource that left the specs."""

    def observe(self, record: ResourceRecord, project: Project) -> str | None:
        """Cheap check (no heavy imports) of live state: a drift description, or None."""


class BaseController:
    """Defaults for controllers whose outputs are only artifacts in the store."""

    kind = ""

    def delete(self, record: ResourceRecord, ctx: ApplyContext) -> None:
        return None

    def observe(self, record: ResourceRecord, project: Project) -> str | None:
        return None
