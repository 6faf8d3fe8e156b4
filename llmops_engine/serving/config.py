"""The declarative Serve application of one Deployment, as Serve's REST API takes it.

Every Deployment is one Serve application with a fixed shape: an `ingress` deployment
(FastAPI, the OpenAI API) and two model deployments, the slots `blue` and `green`. The
application's import path, args and runtime env never change, so Serve never rebuilds
it: everything that varies — which model version a slot holds, the traffic weights,
limits, API-key hashes — is `user_config`, which Serve applies to running replicas by
calling `reconfigure` (a lightweight update, no replica restart).

One more application per project, the gateway (`llmops-gateway`, route "/"), is the HTTP
front of all Deployments: its user_config maps each deployment to its app, key hashes and
model ids, and it forwards requests to the chosen app's ingress through a Serve handle. A
Deployment's own app is HTTP-exposed only when its spec sets an explicit `route_prefix`.

This module is pure (no Ray, no I/O; it reads only the environment, for the hashes of provider
keys) so `plan`, `observe` and the tests can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import DeploymentError
from ..specs.deployment import GATEWAY_APP, GATEWAY_ROUTE

IMPORT_PATH = "llmops_engine.serving.app:build"
GATEWAY_IMPORT_PATH = "llmops_engine.serving.app:build_gateway"
GATEWAY = "gateway"
INGRESS = "ingress"
SLOTS = ("blue", "green")
# Logical CPUs reserved per model replica. Fractional so that both slots (old and new
# version side by side during a rollout) fit on a 2-core laptop next to other work.
REPLICA_CPUS = 0.5
INGRESS_MAX_ONGOING = 512
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class ModelRef:
    """What a slot serves: a TuningJob artifact dir (`path`) or a base model ref (`base`), asked
    with its own prompt or `prompt`, grounded in `knowledge` when given. `version` names the whole."""

    version: str
    fingerprint: str | None = None
    path: str | None = None
    base: str | None = None
    store_root: str | None = None
    store_url: str | None = None  # where a replica without `path` on its node fetches it
    prompt: dict[str, Any] | None = None  # a saved Prompt asked instead of the model's own (base models, RAG)
    knowledge: dict[str, Any] | None = None  # a knowledge base's index (path, fingerprint, store_url, mode, top_k)
    upstream: dict[str, Any] | None = None  # a provider's model (providers.client.Upstream), asked with `prompt`
    fallbacks: list[dict[str, Any]] | None = None  # ModelRefs that answer, in order, when the upstream fails
    label: str | None = None  # who answered, as responses say it (provider:gw/small, a TuningJob, a model ref)
    engine: str = "transformers"  # what runs it in the replica (serving/engines)
    # Test-only fault injection: share of live (ingress-routed) requests that fail.
    fault_error_rate: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "ModelRef | None":
        return cls(**data) if data else None

    def chain(self) -> list["ModelRef"]:
        """Who may answer, in order: this model, then its fallbacks."""
        return [self] + [ModelRef(**fallback) for fallback in self.fallbacks or []]

    def local_model(self) -> "ModelRef | None":
        """The one model of the chain a replica loads (the others are providers), if any."""
        return next((ref for ref in self.chain() if ref.upstream is None), None)

    def key_env(self) -> list[str]:
        """The environment variables holding the API keys of the chain's providers."""
        names = [(ref.upstream or {}).get("api_key_env") for ref in self.chain()]
        return sorted({name for name in names if name})


@dataclass
class Routing:
    """Traffic state of one application: which slot holds what, and who gets how much."""

    primary: str = SLOTS[0]
    weights: dict[str, int] = field(default_factory=lambda: {SLOTS[0]: 100, SLOTS[1]: 0})
    models: dict[str, ModelRef | None] = field(default_factory=lambda: {s: None for s in SLOTS})

    @property
    def spare(self) -> str:
        return SLOTS[1] if self.primary == SLOTS[0] else SLOTS[0]

    @property
    def live_version(self) -> str | None:
        model = self.models.get(self.primary)
        return model.version if model else None

    def with_weights(self, weights: dict[str, int], primary: str | None = None) -> "Routing":
        return Routing(primary or self.primary, dict(weights), dict(self.models))

    def with_model(self, slot: str, model: ModelRef | None) -> "Routing":
        return Routing(self.primary, dict(self.weights), {**self.models, slot: model})

    def routes_json(self) -> dict[str, Any]:
        return {
            "primary": self.primary,
            "slots": {
                slot: {"weight": self.weights.get(slot, 0), "version": m.version if (m := self.models[slot]) else None}
                for slot in SLOTS
            },
        }


@dataclass(frozen=True)
class AppSettings:
    """Everything besides routing that the application config is made of."""

    name: str
    route_prefix: str | None  # None: reachable through the gateway only
    spec: dict[str, Any]  # the Deployment spec, normalized (model_dump(mode="json"))
    key_hashes: list[str] | None  # SHA-256 hex of each API key; None = open endpoint
    log_path: str
    guardrails: list[dict[str, Any]] = field(default_factory=list)  # the Guardrails' compiled policies, in order


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def app_config(settings: AppSettings, routing: Routing) -> dict[str, Any]:
    """One entry of ServeDeploySchema.applications."""
    spec = settings.spec
    return {
        "name": settings.name,
        "route_prefix": settings.route_prefix,
        "import_path": IMPORT_PATH,
        "args": {},
        "runtime_env": {"env_vars": dict(OFFLINE_ENV)},
        # The ingress writes its own request log; Serve's access log would only add noise.
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
        "deployments": [_ingress(settings, routing)]
        + [_slot(spec, slot, routing.models[slot], settings.guardrails) for slot in SLOTS],
    }


def _ingress(settings: AppSettings, routing: Routing) -> dict[str, Any]:
    spec = settings.spec
    return {
        "name": INGRESS,
        # One ingress replica: it is async and light, and it is where the per-version
        # outcome stats that canary analysis reads are kept.
        "num_replicas": 1,
        "max_ongoing_requests": INGRESS_MAX_ONGOING,
        "ray_actor_options": {"num_cpus": 0.0},
        "user_config": {
            "deployment": settings.name,
            **routing.routes_json(),
            "api_key_sha256": settings.key_hashes,
            "limits": spec["limits"],
            "log_path": settings.log_path,
            "log_payloads": spec["log_payloads"],
            **({"guardrails": settings.guardrails} if settings.guardrails else {}),
        },
    }


def _slot(spec: dict[str, Any], slot: str, model: ModelRef | None, guardrails: list[dict[str, Any]]) -> dict[str, Any]:
    batching = spec["batching"]
    replicas = spec["replicas"]
    scaling: dict[str, Any]
    if model is None or replicas["min"] == replicas["max"]:
        scaling = {"num_replicas": replicas["min"] if model else 1}
    else:
        scaling = {
            "autoscaling_config": {
                "min_replicas": replicas["min"],
                "max_replicas": replicas["max"],
                "target_ongoing_requests": batching["max_batch_size"],
            }
        }
    custom = spec.get("resources", {}).get("custom")
    placement = {"ray_actor_options": {"num_cpus": REPLICA_CPUS, **({"resources": custom} if custom else {})}}
    if model is not None and model.engine == "vllm":  # the engine's GPU worker is placed with the replica
        from .engines.vllm import slot_deployment_options

        placement = slot_deployment_options(REPLICA_CPUS)
        if custom:  # the replica's bundle holds what its actor asks for
            placement["ray_actor_options"]["resources"] = custom
            placement["placement_group_bundles"][0].update(custom)
    return {
        "name": slot,
        **scaling,
        # Twice a batch: one batch runs while the next one fills. A provider's calls only wait on
        # the network: as many as the ingress takes.
        "max_ongoing_requests": INGRESS_MAX_ONGOING if model and model.upstream else 2 * batching["max_batch_size"],
        **placement,
        "user_config": {
            "model": model.to_json() if model else None,
            "max_prompt_tokens": spec["limits"]["max_prompt_tokens"],
            "batching": batching,
            **({"provider_key_sha256": hashes} if (hashes := provider_key_hashes(model)) else {}),
            # retrieved chunks pass the input checks too (slot.py retrieves)
            **({"guardrails": guardrails} if guardrails and model and model.knowledge else {}),
        },
    }


def provider_key_hashes(model: ModelRef | None) -> dict[str, str]:
    """SHA-256 of each provider key a version's chain calls with, from this environment: what the
    slot's config carries (the keys themselves reach its replicas through serving/keys.py)."""
    names = model.key_env() if model else []
    unset = [name for name in names if not os.environ.get(name)]
    if unset:
        raise DeploymentError(f"model version {model.version} calls a provider with the key in ${unset[0]}, which is "
                              "unset or empty here; export it and apply again (nothing changed live)")
    return {name: hash_key(os.environ[name]) for name in names}


# the gateway ---------------------------------------------------------------------
def gateway_entry(settings: AppSettings, model_version: str | None) -> dict[str, Any]:
    """What the gateway knows of one deployment: where to send its requests, who may call
    it (key hashes; None = open), which `model` values select it, and its HTTP limits."""
    limits = settings.spec["limits"]
    return {
        "app": settings.name,
        "model_ids": [settings.name] + ([model_version] if model_version else []),
        "api_key_sha256": settings.key_hashes,
        "max_body_bytes": limits["max_body_bytes"],
        "body_timeout_s": limits["body_timeout_s"],
        "log_path": settings.log_path,
        "log_payloads": settings.spec["log_payloads"],
    }


def gateway_config(entries: dict[str, dict[str, Any]], log_path: str) -> dict[str, Any]:
    """The gateway application; like a Deployment's app, only its user_config ever changes."""
    return {
        "name": GATEWAY_APP,
        "route_prefix": GATEWAY_ROUTE,
        "import_path": GATEWAY_IMPORT_PATH,
        "args": {},
        "runtime_env": {},
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
        "deployments": [{
            "name": GATEWAY,
            # One replica: it is async and only parses, checks and forwards.
            "num_replicas": 1,
            "max_ongoing_requests": INGRESS_MAX_ONGOING,
            "ray_actor_options": {"num_cpus": 0.0},
            "user_config": {"deployments": {name: entries[name] for name in sorted(entries)}, "log_path": log_path},
        }],
    }


def gateway_entries_of(app: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The per-deployment entries of a deployed gateway config ({} when there is none)."""
    for deployment in (app or {}).get("deployments", []):
        if deployment["name"] == GATEWAY:
            return dict((deployment.get("user_config") or {}).get("deployments") or {})
    return {}


def routing_of(app: dict[str, Any]) -> Routing:
    """Routing state read back from a deployed application config."""
    by_name = {d["name"]: d for d in app.get("deployments", [])}
    ingress = (by_name.get(INGRESS) or {}).get("user_config") or {}
    slots = ingress.get("slots") or {}
    models = {s: ModelRef.from_json(((by_name.get(s) or {}).get("user_config") or {}).get("model")) for s in SLOTS}
    weights = {s: int((slots.get(s) or {}).get("weight", 0)) for s in SLOTS}
    return Routing(ingress.get("primary", SLOTS[0]), weights, models)


# what drift detection compares -------------------------------------------------
_COMPARED = ("num_replicas", "autoscaling_config", "max_ongoing_requests", "user_config", "ray_actor_options")


def config_digest(app: dict[str, Any]) -> str:
    """Digest of the parts of an application config the engine sets (stable across a
    round trip through Serve, which adds defaults to what it stores)."""
    deployments = sorted(app.get("deployments", []), key=lambda d: d["name"])
    essence = {
        "import_path": app.get("import_path"),
        "route_prefix": app.get("route_prefix"),
        "args": app.get("args") or {},
        "deployments": [{"name": d["name"], **{k: d.get(k) for k in _COMPARED if d.get(k) is not None}} for d in deployments],
    }
    return hashlib.sha256(json.dumps(essence, sort_keys=True).encode()).hexdigest()
