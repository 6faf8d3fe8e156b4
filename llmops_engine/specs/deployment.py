"""Deployment: serve a gated model version on Ray Serve behind an OpenAI-compatible API."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from .base import (EnvVarName, FieldError, KindSpec, PathInput, Reference, StrictModel, check_custom_resources,
                   custom_resources_field, reference)
from .provider import is_provider_ref, provider_ref
from .tuning import MODEL_REF, is_model_ref

MAX_FALLBACKS = 4


def _is_gguf_base(ref: str) -> bool:
    from .tuning import GGUF_BUILTINS

    return ref.startswith("gguf:") or ref.removeprefix("builtin:") in GGUF_BUILTINS


class Replicas(StrictModel):
    min: PositiveInt = 1
    max: PositiveInt = 1

    @model_validator(mode="after")
    def _ordered(self) -> "Replicas":
        if self.max < self.min:
            raise FieldError(("max", f"replicas.max ({self.max}) is below replicas.min ({self.min})"))
        return self


class Analysis(StrictModel):
    window_s: PositiveFloat = 20
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p95_ms: PositiveFloat | None = None
    min_requests: int = Field(default=0, ge=0, description="Fewer requests than this in a window fails it.")


class LoadThresholds(StrictModel):
    """k6-style thresholds of a load test: every one given must hold (None: not checked)."""

    p50_ms: PositiveFloat | None = None
    p95_ms: PositiveFloat | None = None
    p99_ms: PositiveFloat | None = None
    ttft_p95_ms: PositiveFloat | None = Field(default=None, description="95th percentile time to first token.")
    error_rate: float | None = Field(default=None, ge=0, le=1, description="Most errors per request.")
    min_rps: PositiveFloat | None = Field(default=None, description="Fewest completed requests per second.")
    min_tokens_per_s: PositiveFloat | None = None


class LoadTest(StrictModel):
    """Bounded load on the deployment's own endpoint, after each rollout step (and `llmops loadtest`)."""

    clients: int = Field(default=8, ge=1, le=256, description="Concurrent virtual users.")
    duration_s: float = Field(default=20, gt=0, le=600)
    max_requests: int | None = Field(default=None, ge=1, le=100_000, description="Stop after this many requests.")
    max_tokens: PositiveInt = Field(default=32, le=4096, description="max_tokens of each request.")
    thresholds: LoadThresholds = Field(default_factory=LoadThresholds)


class Rollout(StrictModel):
    strategy: Literal["rolling", "blue-green", "canary"] = "rolling"
    steps: list[int] = Field(default_factory=lambda: [100], description="Canary traffic percentages.")
    analysis: Analysis = Field(default_factory=Analysis)
    drain_s: float = Field(default=5, ge=0, description="Blue-green: how long the old version lingers.")
    load_test: LoadTest | None = Field(
        default=None, description="Load the endpoint at every step (canary) or after the switch; a failed threshold "
                                  "rolls the new version back (exit 6) and the previous one keeps 100 %.",
    )

    @model_validator(mode="after")
    def _steps(self) -> "Rollout":
        if not self.steps:
            raise FieldError(("steps", "rollout.steps needs at least one step, ending with 100"))
        outside = [i for i, step in enumerate(self.steps) if not 0 < step <= 100]
        if outside:
            raise FieldError((f"steps.{outside[0]}", "rollout.steps are percentages in (0, 100]"))
        not_rising = [i for i in range(1, len(self.steps)) if self.steps[i] <= self.steps[i - 1]]
        if not_rising:
            raise FieldError((f"steps.{not_rising[0]}", "rollout.steps must increase strictly"))
        if self.steps[-1] != 100:
            raise FieldError((f"steps.{len(self.steps) - 1}", "the last rollout step must be 100"))
        return self


class Auth(StrictModel):
    api_keys_env: EnvVarName = Field(description="Environment variable with comma-separated API keys.")


class Limits(StrictModel):
    max_new_tokens: PositiveInt = 128
    max_prompt_tokens: PositiveInt = 1024
    max_body_bytes: PositiveInt = 65536
    body_timeout_s: PositiveFloat = Field(
        default=10, le=300, description="A request body must arrive within this time (slow clients get 408)."
    )


# The project's gateway serves every deployment at "/" (OpenAI paths under /v1); an explicit
# route_prefix there or under one of the paths it answers itself would shadow it.
GATEWAY_ROUTE = "/"
GATEWAY_APP = "llmops-gateway"  # the gateway's Serve app (and request log): no Deployment may take the name
GATEWAY_PATHS = ("/v1", "/healthz", "/metrics")


class Batching(StrictModel):
    max_batch_size: PositiveInt = Field(default=8, description="Most sequences one replica decodes together.")
    batch_wait_timeout_s: float = Field(
        default=0.05, ge=0, description="How long an idle replica waits for more requests to prefill with its first one; "
                                        "later requests join the running batch at its next decode step.",
    )


class ReplicaResources(StrictModel):
    custom: dict[str, PositiveFloat] = custom_resources_field("model replica")

    @model_validator(mode="after")
    def _custom_names(self) -> "ReplicaResources":
        check_custom_resources(self.custom)
        return self


class DeploymentSpec(KindSpec):
    kind: ClassVar[str] = "Deployment"
    keeps_running: ClassVar[bool] = True

    model: str = Field(description="A TuningJob (its gated output), a base model ref served as it is "
                                   "(builtin:…, hf:org/name, gguf:file.gguf, path:dir; with gate: null), or a "
                                   "provider's model (provider:<name>/<alias>): a prompt-only deployment.")
    fallbacks: list[str] = Field(
        default_factory=list, max_length=MAX_FALLBACKS,
        description="For a provider model: what answers, in order, when the provider fails (after its retries): "
                    "another provider:<name>/<alias>, a TuningJob, or a model ref. The response says who answered.",
    )
    prompt: str
    gate: str | None = Field(description="Evaluation that must pass; write `gate: null` to deploy ungated.")
    knowledge_base: str | None = Field(
        default=None, description="Ground answers in this KnowledgeBase: each chat request retrieves chunks for "
                                  "the Prompt's {context}, and the response lists their sources.",
    )
    guardrails: list[str] = Field(
        default_factory=list, max_length=16,
        description="Guardrails checking every request (and retrieved chunks) and answer, in order; "
                    "a policy change updates the live deployment without a restart.",
    )
    allow_prompt_mismatch: bool = False
    replicas: Replicas = Field(default_factory=Replicas)
    # Left out of the dump when it asks for nothing, so deployments written before it keep their fingerprint.
    resources: ReplicaResources = Field(default_factory=ReplicaResources, exclude_if=lambda value: not value.custom)
    rollout: Rollout = Field(default_factory=Rollout)
    auth: Auth | Literal["none"] = Field(description="{api_keys_env: NAME}, or `none` for an open endpoint.")
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)
    # Left out of the dump when "transformers" (the default), so deployments written before engines keep their fingerprint.
    engine: Literal["transformers", "llama-cpp", "vllm"] = Field(
        default="transformers", exclude_if=lambda value: value == "transformers",
        description="What runs the model: transformers (continuous batching, on CPU), llama-cpp (the TuningJob's "
                    "GGUF export on CPU; the llama-cpp extra) or vllm (its merged export on a GPU, via Ray Serve LLM).",
    )
    route_prefix: str | None = Field(
        default=None, pattern=r"^/([A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*)?$",
        description="Also serve this deployment's own API at this HTTP prefix; by default it is reached only "
                    "through the project's gateway (one base URL, `model` selects the deployment).",
    )
    log_payloads: bool = False

    @model_validator(mode="after")
    def _base_model_ungated(self) -> "DeploymentSpec":
        if self.serves_base_model() and self.gate is not None:
            message = (f"'{self.model}' is a base model, which no Evaluation gates (gates judge TuningJobs); "
                       "write gate: null, or serve a TuningJob")
            raise FieldError(("gate", message))
        if ":" in self.model and not (self.serves_base_model() or self.serves_provider()):
            raise FieldError(("model", f"'{self.model}' is neither a TuningJob name, a model ref ({MODEL_REF}) "
                                       "nor provider:<name>/<alias>"))
        return self

    @model_validator(mode="after")
    def _engine_runs_the_model(self) -> "DeploymentSpec":
        if self.engine != "transformers" and (self.serves_provider() or self.fallbacks):
            raise FieldError(("engine", f"engine {self.engine} runs a local model; a provider's model is relayed "
                                        "(remove `engine`, or serve a TuningJob)"))
        if self.engine == "llama-cpp" and self.serves_base_model() and not _is_gguf_base(self.model):
            raise FieldError(("engine", f"engine llama-cpp runs GGUF files and '{self.model}' is not one: serve a "
                                        "TuningJob that exports gguf, builtin:smollm2-135m-instruct or a gguf: file"))
        return self

    @model_validator(mode="after")
    def _guardrails_once(self) -> "DeploymentSpec":
        repeated = [i for i, name in enumerate(self.guardrails) if name in self.guardrails[:i]]
        if repeated:
            name = self.guardrails[repeated[0]]
            raise FieldError((f"guardrails.{repeated[0]}", f"Guardrail '{name}' is listed twice: its checks would run "
                                                           "twice and every action be counted twice"))
        return self

    @model_validator(mode="after")
    def _fallbacks(self) -> "DeploymentSpec":
        if self.fallbacks and not self.serves_provider():
            message = "fallbacks take over when a provider fails; this deployment's model is not a provider's"
            raise FieldError(("fallbacks", message))
        local = [i for i, fallback in enumerate(self.fallbacks) if not is_provider_ref(fallback)]
        if len(local) > 1 or (local and local[0] != len(self.fallbacks) - 1):
            at = local[1] if len(local) > 1 else local[0]
            message = ("a replica loads one local model (a TuningJob or a model ref), and it answers whatever reaches "
                       "it: give at most one, as the last fallback")
            raise FieldError((f"fallbacks.{at}", message))
        seen = [self.model]
        for index, fallback in enumerate(self.fallbacks):
            if ":" in fallback and not (is_model_ref(fallback) or is_provider_ref(fallback)):
                raise FieldError((f"fallbacks.{index}", f"'{fallback}' is neither a TuningJob name, a model ref "
                                                        "nor provider:<name>/<alias>"))
            if fallback in seen:
                where = "the model itself" if fallback == self.model else f"fallbacks.{seen.index(fallback) - 1}"
                raise FieldError((f"fallbacks.{index}", f"'{fallback}' is already {where}: a fallback chain must not "
                                                        "come back to a model it has tried (a cycle)"))
            seen.append(fallback)
        return self

    def serves_base_model(self) -> bool:
        return is_model_ref(self.model)

    def serves_provider(self) -> bool:
        return is_provider_ref(self.model)

    def secret_env(self) -> list[str]:
        return [self.auth.api_keys_env] if isinstance(self.auth, Auth) else []

    def path_inputs(self) -> list[PathInput]:
        paths = []
        for index, model in enumerate([self.model, *self.fallbacks]):
            kind, _, path = model.partition(":")
            field = ("model",) if index == 0 else ("fallbacks", index - 1)
            if kind in ("path", "gguf"):
                paths.append(PathInput(path, field, must_exist=kind == "gguf"))
        return paths

    def references(self) -> list[Reference]:
        tuned = None if self.serves_base_model() or self.serves_provider() else self.model
        return (
            reference("spec.model", "TuningJob", tuned)
            + model_references("spec.model", self.model if self.serves_provider() else None)
            + [ref for i, fallback in enumerate(self.fallbacks) for ref in model_references(f"spec.fallbacks.{i}", fallback)]
            + reference("spec.prompt", "Prompt", self.prompt)
            + reference("spec.gate", "Evaluation", self.gate)
            + reference("spec.knowledge_base", "KnowledgeBase", self.knowledge_base)
            + [ref for i, name in enumerate(self.guardrails) for ref in reference(f"spec.guardrails.{i}", "Guardrail", name)]
        )


def model_references(field: str, model: str | None) -> list[Reference]:
    """The resource a fallback (or a provider model) names: a Provider or a TuningJob; none for a model ref."""
    if model is None or is_model_ref(model):
        return []
    named = provider_ref(model)
    return reference(field, "Provider", named[0]) if named else reference(field, "TuningJob", model)
