"""What the engine knows about one applied resource; stored beside the artifacts so every
clone that shares the store sees the same truth."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["ready", "failed", "degraded"]


class ResourceRecord(BaseModel):
    kind: str
    name: str
    fingerprint: str
    spec: dict[str, Any]
    dependencies: dict[str, str] = Field(default_factory=dict, description="key -> fingerprint applied against")
    inputs: dict[str, str] = Field(default_factory=dict, description="repo path -> content hash")
    outputs: dict[str, Any] = Field(default_factory=dict)
    status: Status = "ready"
    message: str = ""
    applied_at: float = 0.0
    apply_id: str = ""
    run_seconds: float | None = Field(default=None, description="how long the apply step that produced it took")
    resources: str | None = Field(default=None, description="what that step asked of the cluster, e.g. '2 workers × 1 CPU'")

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"
