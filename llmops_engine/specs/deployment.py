"""Deployment: serve a gated model version on Ray Serve behind an OpenAI-compatible API."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from .base import EnvVarName, KindSpec, Reference, StrictModel, reference


class Replicas(StrictModel):
    min: PositiveInt = 1
    max: PositiveInt = 1

    @model_validator(mode="after")
    def _ordered(self) -> "Replicas":
        if self.max < self.min:
            raise ValueError(f"replicas.max ({self.max}) is below replicas.min ({self.min})")
        return self


class Analysis(StrictModel):
    window_s: PositiveFloat = 20
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p95_ms: PositiveFloat | None = None
    min_requests: int = Field(default=0, ge=0, description="Fewer requests than this in a window fails it.")


class Rollout(StrictModel):
    strategy: Literal["rolling", "blue-green", "canary"] = "rolling"
    steps: list[int] = Field(default_factory=lambda: [100], description="Canary traffic percentages.")
    analysis: Analysis = Field(default_factory=Analysis)
    drain_s: float = Field(default=5, ge=0, description="Blue-green: how long the old version lingers.")

    @model_validator(mode="after")
    def _steps(self) -> "Rollout":
        if any(not 0 < s <= 100 for s in self.steps):
            raise ValueError("rollout.steps are percentages in (0, 100]")
        if self.steps != sorted(set(self.steps)):
            raise ValueError("rollout.steps must increase strictly")
        if self.steps[-1] != 100:
            raise ValueError("the last rollout step must be 100")
        return self


class Auth(StrictModel):
    api_keys_env: EnvVarName = Field(description="Environment variable with comma-separated API keys.")


class Limits(StrictModel):
    max_new_tokens: PositiveInt = 128
    max_prompt_tokens: PositiveInt = 1024
    max_body_bytes: PositiveInt = 65536


class Batching(StrictModel):
    max_batch_size: PositiveInt = 8
    batch_wait_timeout_s: float = Field(
        default=0.05, ge=0, description="How long a batch waits to fill; 50 ms doubled 16-client throughput (BENCHMARKS.md)."
    )


class DeploymentSpec(KindSpec):
    kind: ClassVar[str] = "Deployment"

    model: str = Field(description="The TuningJob whose gated output is served.")
    prompt: str
    gate: str | None = Field(description="Evaluation that must pass; write `gate: null` to deploy ungated.")
    allow_prompt_mismatch: bool = False
    replicas: Replicas = Field(default_factory=Replicas)
    rollout: Rollout = Field(default_factory=Rollout)
    auth: Auth | Literal["none"] = Field(description="{api_keys_env: NAME}, or `none` for an open endpoint.")
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)
    route_prefix: str = Field(default="/", pattern=r"^/[A-Za-z0-9/_-]*$")
    log_payloads: bool = False

    def references(self) -> list[Reference]:
        return (
            reference("spec.model", "TuningJob", self.model)
            + reference("spec.prompt", "Prompt", self.prompt)
            + reference("spec.gate", "Evaluation", self.gate)
        )
