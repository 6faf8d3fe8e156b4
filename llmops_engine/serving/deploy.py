"""Deploying a model version as a Serve application, and `llmops rollback`.

Shared by the Deployment controller (apply) and the CLI (rollback). API keys are read
from the environment variable the spec names, at deploy time, and only their SHA-256
hashes leave this process (in the ingress user_config); they are never written to
records, artifacts or logs.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from ..errors import DeploymentError, LLMOpsError, RolloutFailed
from ..project import Project
from ..state.artifacts import ArtifactStore
from ..state.stores import open_store
from .config import (
    GATEWAY_APP, GATEWAY_ROUTE, AppSettings, ModelRef, app_config, config_digest, gateway_entries_of, gateway_entry,
    hash_key,
)
from .logs import log_path
from .rest import Dashboard, http_options
from .rollout import Outcome, Rollout, guarded_load


def endpoint(project: Project, route_prefix: str = GATEWAY_ROUTE) -> str:
    """The OpenAI base URL: the gateway's (every deployment, `model` selects) by default."""
    serve = project.settings.serve
    return f"http://{serve.host}:{serve.port}{route_prefix.rstrip('/')}/v1"


def key_hashes(spec: dict[str, Any]) -> list[str] | None:
    """SHA-256 of each key in the env var named by `auth.api_keys_env`; None for `auth: none`."""
    auth = spec["auth"]
    if auth == "none":
        return None
    name = auth["api_keys_env"]
    keys = [k.strip() for k in os.environ.get(name, "").split(",") if k.strip()]
    if not keys:
        raise DeploymentError(
            f"auth.api_keys_env names ${name}, but it is unset or empty; export it with one or more "
            "comma-separated API keys (or set `auth: none` for an open endpoint)"
        )
    return [hash_key(k) for k in keys]


def app_settings(project: Project, name: str, spec: dict[str, Any], guardrails: list[dict[str, Any]]) -> AppSettings:
    # Records written before the gateway existed say "/", which is the gateway's now.
    prefix = spec.get("route_prefix")
    limits = {"body_timeout_s": 10.0, **spec["limits"]}  # ditto: older records lack it
    return AppSettings(name=name, route_prefix=None if prefix == GATEWAY_ROUTE else prefix,
                       spec={**spec, "limits": limits}, key_hashes=key_hashes(spec),
                       log_path=str(log_path(project, name).resolve()), guardrails=guardrails)


def open_cluster(project: Project) -> Dashboard:
    """Connect this process to the cluster (handles need it) and return its Serve REST API."""
    from .. import raycluster

    info = raycluster.connect(project)
    if not info.dashboard_url:
        raise DeploymentError(f"the Ray cluster at {info.address} has no dashboard; Serve's REST API needs it")
    return Dashboard(info.dashboard_url, raycluster.dashboard_headers(project))


def deploy(
    project: Project, name: str, spec: dict[str, Any], target: ModelRef, report: Callable[[str], None] = print,
    guardrails: list[dict[str, Any]] | None = None, messages: list[list[dict[str, str]]] | None = None,
) -> tuple[Outcome, dict[str, Any], Dashboard]:
    """Make `target` the live version of application `name` per the spec's rollout strategy (under
    its load test, asking `messages`), with the Guardrails' compiled policies, then route the gateway
    to it. A first version that fails its load test is taken down again (there is nothing to roll back to)."""
    settings = app_settings(project, name, spec, guardrails or [])
    dashboard = open_cluster(project)
    rollout = _rollout(project, dashboard, report)
    load = load_test(project, name, spec, messages)
    first = _live_version(dashboard, name) is None
    outcome = rollout.run(settings, target, spec["rollout"], None if first else load)
    entries = gateway_entries(dashboard)
    entries[name] = gateway_entry(settings, outcome.routing.live_version)
    rollout.publish(entries, _gateway_log(project))
    if first and load is not None:
        outcome = _first_under_load(project, name, outcome, load, report)
    return outcome, app_config(settings, outcome.routing), dashboard


def load_test(project: Project, name: str, spec: dict[str, Any],
              messages: list[list[dict[str, str]]] | None) -> Callable[[], dict[str, Any]] | None:
    """The spec's `rollout.load_test` against this deployment's own endpoint, or None."""
    test = spec["rollout"].get("load_test")
    if not test:
        return None
    from ..loadtest.generator import run_load
    from ..loadtest.target import deployment_target
    from ..loadtest.thresholds import judge_load

    target = deployment_target(project, name, spec)

    def run() -> dict[str, Any]:
        result = run_load(target, test["clients"], test["duration_s"], max_requests=test["max_requests"],
                          max_tokens=test["max_tokens"], messages=messages)
        return {**result, "source": "rollout", "verdict": judge_load(result, test["thresholds"])}

    return run


def _first_under_load(project: Project, name: str, outcome: Outcome, load: Callable[[], dict[str, Any]],
                      report: Callable[[str], None]) -> Outcome:
    result = guarded_load(load)
    report(f"  {name}: load test: {result['verdict']['summary']}")
    if not result["verdict"]["passed"]:
        undeploy(project, name)
        raise RolloutFailed(f"the first model version {outcome.routing.live_version} of {name} failed its load test: "
                            f"{result['verdict']['summary']}; it was taken down (no earlier version to roll back to)")
    return Outcome(outcome.routing, outcome.previous, outcome.steps, [result])


def _live_version(dashboard: Dashboard, name: str) -> str | None:
    from .config import routing_of

    live = dashboard.application(name)
    return routing_of(live["deployed_app_config"]).live_version if live and live.get("deployed_app_config") else None


def undeploy(project: Project, name: str) -> None:
    """Take deployment `name` out of the gateway, then delete its application."""
    dashboard = open_cluster(project)
    rollout = _rollout(project, dashboard, lambda line: None)
    entries = gateway_entries(dashboard)
    if entries.pop(name, None) is not None:
        rollout.publish(entries, _gateway_log(project))
    dashboard.delete_application(name, rollout.http_options)


def gateway_entries(dashboard: Dashboard) -> dict[str, dict[str, Any]]:
    """The gateway's routes, less those of apps that no longer exist (deleted outside llmops)."""
    apps = dashboard.details().get("applications") or {}
    entries = gateway_entries_of((apps.get(GATEWAY_APP) or {}).get("deployed_app_config"))
    return {name: entry for name, entry in entries.items() if entry["app"] in apps}


def _rollout(project: Project, dashboard: Dashboard, report: Callable[[str], None]) -> Rollout:
    serve = project.settings.serve
    return Rollout(dashboard, http_options(serve.host, serve.port), report)


def _gateway_log(project: Project) -> str:
    return str(log_path(project, GATEWAY_APP).resolve())


def rollback(
    project: Project, name: str, report: Callable[[str], None] = print, lock_timeout: float = 0.0,
) -> dict[str, Any]:
    """`llmops rollback <deployment>`: serve the previous model version again (a quick switch,
    with the same readiness and smoke checks as any rollout), holding the apply lock.
    Returns the new record outputs; the record's fingerprint is kept, so `plan` stays clean
    until the specs change."""
    store = open_store(project)
    lock = store.lock(project.settings.lock_ttl_s)
    lock.acquire(timeout_s=lock_timeout, command=f"llmops rollback {name}")
    try:
        outputs = _rollback(project, store, name, report)
        if note := store.write_index():
            report(note)
        return outputs
    finally:
        lock.release()


def _rollback(project: Project, store: ArtifactStore, name: str, report: Callable[[str], None]) -> dict[str, Any]:
    record = store.read_records().get(f"Deployment/{name}")
    if record is None:
        raise LLMOpsError(f"no Deployment named '{name}' has been applied in this project")
    previous = record.outputs.get("previous_served") or _legacy_previous(record.outputs)
    if not previous:
        raise DeploymentError(f"Deployment '{name}' has no previous model version to roll back to")
    target = _restorable(store, previous)
    # A rollback is the way back from trouble: a quick switch, no load test in the way.
    spec = {**record.spec, "rollout": {**record.spec["rollout"], "strategy": "rolling", "load_test": None}}
    outcome, config, dashboard = deploy(project, name, spec, target, report, record.outputs.get("guardrail_policies"))
    outputs = {
        **record.outputs,
        "model_fingerprint": target.fingerprint,
        "model_version": target.version,
        "served": previous,
        "knowledge_base": (target.knowledge or {}).get("fingerprint"),
        "previous_model_fingerprint": record.outputs.get("model_fingerprint"),
        "previous_model_version": record.outputs.get("model_version"),
        "previous_served": record.outputs.get("served"),
        "serve_config_digest": config_digest(config),
        "dashboard_url": dashboard.url,
        "rolled_back_at": time.time(),
    }
    message = f"rolled back to model version {target.version} by `llmops rollback`"
    store.write_record(record.model_copy(update={"outputs": outputs, "message": message}))
    return outputs


def _legacy_previous(outputs: dict[str, Any]) -> dict[str, Any] | None:
    # Records written before `previous_served` existed: a tuned model asked its own way.
    fingerprint = outputs.get("previous_model_fingerprint")
    return {"version": fingerprint[:12], "fingerprint": fingerprint} if fingerprint else None


def _restorable(store: ArtifactStore, served: dict[str, Any]) -> ModelRef:
    """The ModelRef that served before, with its store objects (model, index) checked and
    their paths as they are on this machine."""
    fields = {**served, "store_url": store.url}
    if served.get("upstream"):
        fields["fallbacks"] = _restorable_chain(store, served)
    elif not served.get("base"):
        fields["path"] = _object_path(store, served["fingerprint"], served["version"])
    if served.get("knowledge"):
        index = served["knowledge"]
        fields["knowledge"] = {**index, "path": _object_path(store, index["fingerprint"], served["version"])}
    return ModelRef(**fields)


def _restorable_chain(store: ArtifactStore, served: dict[str, Any]) -> list[dict[str, Any]]:
    """A provider version's fallbacks as they can serve again: every provider model of the chain
    still listed by its provider (asked now, as apply does), a TuningJob fallback still in the store."""
    from ..providers.catalog import require_listed
    from ..providers.client import Upstream

    fallbacks = list(served.get("fallbacks") or [])
    require_listed([Upstream.from_json(ref["upstream"]) for ref in [served, *fallbacks] if ref.get("upstream")])
    return [{**ref, "path": _object_path(store, ref["fingerprint"], served["version"])} if ref.get("path") else ref
            for ref in fallbacks]


def _object_path(store: ArtifactStore, fingerprint: str, version: str) -> str:
    if not store.has(fingerprint):
        raise DeploymentError(f"the artifacts of {fingerprint[:12]} (previous version {version}) are gone from the store")
    return str(store.local_path(fingerprint))
