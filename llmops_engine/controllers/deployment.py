"""Deployment controller: serve the gated model version on Ray Serve.

Import-light on purpose: `plan` imports this module to call `observe`, which talks to the
dashboard over plain HTTP. Ray and the serving stack are imported inside `apply`/`delete`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import DeploymentError, GateFailed, LiveStateUnknown, LLMOpsError
from ..project import Project
from ..specs.resource import Resource
from ..state.records import ResourceRecord
from .base import ApplyContext, BaseController, Outputs


class DeploymentController(BaseController):
    kind = "Deployment"

    def __init__(self, fault_error_rate: float = 0.0):
        # Test-only: share of live requests the *new* version fails (it still passes its
        # smoke request), to prove a bad canary is caught and rolled back.
        self.fault_error_rate = fault_error_rate

    def apply(self, resource: Resource, ctx: ApplyContext, staging: Path) -> Outputs:
        from ..serving.config import config_digest
        from ..serving.deploy import deploy, endpoint

        spec = resource.normalized_spec()
        target = self._target(resource, ctx)
        policies = _guardrail_policies(resource, ctx)
        messages = _load_messages(ctx, spec)
        outcome, config, dashboard = deploy(ctx.project, resource.name, spec, target, ctx.report, policies, messages)
        record = ctx.records.get(resource.key)
        previous = _previous_served(record, outcome, target)
        _write_artifacts(staging, config, outcome)
        return {
            "model_fingerprint": target.fingerprint,
            "model_version": target.version,
            "previous_model_fingerprint": previous.get("fingerprint") if previous else None,
            "previous_model_version": previous.get("version") if previous else None,
            # What each slot was given, so `llmops rollback` restores the prompt and index too.
            "served": _shown(target),
            "previous_served": previous,
            "knowledge_base": _knowledge_fingerprint(target),
            # The gateway's base URL; `model_id` in a request selects this deployment there.
            "endpoint": endpoint(ctx.project),
            "model_id": resource.name,
            "own_endpoint": endpoint(ctx.project, resource.spec.route_prefix) if resource.spec.route_prefix else None,
            "app": resource.name,
            "slot": outcome.routing.primary,
            "strategy": resource.spec.rollout.strategy,
            "canary_analysis": outcome.steps,
            "guardrails": [{"name": name, "policy_sha256": _digest(policy)} for name, policy in zip(resource.spec.guardrails, policies)],
            "guardrail_policies": policies,  # what `llmops rollback` serves again
            "load_tests": _load_history(record, outcome, target),
            "dashboard_url": dashboard.url,
            "serve_config_digest": config_digest(config),
        }

    def _target(self, resource: Resource, ctx: ApplyContext):
        """What the slots will serve: the gated TuningJob output or a base model, with the prompt
        it is asked with when that is not the model's own, and the knowledge base's index."""
        from ..serving.config import ModelRef

        spec = resource.spec
        knowledge = _knowledge(resource, ctx)
        if spec.serves_provider():
            return self._relayed(resource, ctx, knowledge)
        # A tuned model is asked its own way (template.json) unless the spec says otherwise.
        own_prompt = not (spec.serves_base_model() or knowledge or spec.allow_prompt_mismatch)
        prompt = None if own_prompt else _served_prompt(resource, ctx)
        engine = _usable_engine(spec.engine, ctx)
        _check_replica_fits(resource, ctx)
        if spec.serves_base_model():
            ref = _absolute_ref(spec.model, ctx)
            identity = _identity(ref, prompt, knowledge, spec.engine)
            return ModelRef(version=identity[:12], fingerprint=identity, base=ref, store_root=str(ctx.store.root),
                            prompt=prompt, knowledge=knowledge, engine=engine, fault_error_rate=self.fault_error_rate)
        model_key = f"TuningJob/{spec.model}"
        fingerprint = ctx.fingerprint(model_key)
        _check_gate(resource, ctx, fingerprint)
        _check_prompt(resource, ctx, model_key)
        model_dir = ctx.artifact_dir(model_key)
        if not model_dir.is_dir():
            raise DeploymentError(f"the artifacts of {model_key} ({fingerprint[:12]}) are missing; apply it first")
        # A tuned model asked its own way on the default engine keeps its fingerprint's name; another
        # prompt, an index or another engine (other numerics: a GGUF's, vLLM's kernels) makes a new version.
        same = own_prompt and engine == "transformers"
        version = fingerprint[:12] if same else _identity(fingerprint, prompt, knowledge, engine)[:12]
        return ModelRef(version=version, fingerprint=fingerprint, path=str(model_dir), store_url=ctx.store.url,
                        prompt=prompt, knowledge=knowledge, engine=engine, fault_error_rate=self.fault_error_rate)

    def _relayed(self, resource: Resource, ctx: ApplyContext, knowledge: dict | None):
        """A prompt-only version: the provider's model asked with the Deployment's Prompt, then its
        fallbacks; refused unless the provider lists every provider model of the chain now."""
        from ..serving.config import ModelRef
        from ..providers.catalog import require_listed, upstream_of

        spec = resource.spec
        prompt = _served_prompt(resource, ctx)
        upstream = upstream_of(spec.model, ctx.resources)
        fallbacks = [_fallback(model, prompt, ctx) for model in spec.fallbacks]
        require_listed([upstream] + [upstream_of(m, ctx.resources) for m in spec.fallbacks if m.startswith("provider:")])
        _check_provider_gate(resource, ctx, upstream)
        fallback_json = [f.to_json() for f in fallbacks]
        identity = _identity(json.dumps([upstream.to_json(), fallback_json], sort_keys=True), prompt, knowledge)
        return ModelRef(version=identity[:12], fingerprint=identity, prompt=prompt, knowledge=knowledge,
                        upstream=upstream.to_json(), fallbacks=fallback_json, label=upstream.label,
                        fault_error_rate=self.fault_error_rate)

    def delete(self, record: ResourceRecord, ctx: ApplyContext) -> None:
        from ..serving.deploy import undeploy

        undeploy(ctx.project, record.name)

    def observe(self, record: ResourceRecord, project: Project) -> str | None:
        """Compare the live Serve application with what apply left (plain HTTP, no Ray)."""
        from .. import raycluster
        from ..serving.config import GATEWAY_APP, config_digest, gateway_entries_of, routing_of
        from ..serving.rest import Dashboard

        url = os.environ.get("RAY_DASHBOARD_URL") or record.outputs.get("dashboard_url")
        if not url:
            return None
        if not (os.environ.get("RAY_DASHBOARD_URL") or _is_loopback(url)):
            # The recorded URL comes from the shared store: never send the cluster token to it.
            raise LiveStateUnknown(f"set RAY_DASHBOARD_URL to observe the cluster this deployment runs on ({url})")
        try:
            apps = Dashboard(url, raycluster.dashboard_headers(project), timeout_s=5).details().get("applications") or {}
        except LLMOpsError as exc:
            if project.ray_address() is None and _is_loopback(url):
                return "the local Ray head is not running (after `llmops down` or a reboot)"
            raise LiveStateUnknown(f"the Ray dashboard at {url} is not reachable") from exc
        live = apps.get(record.name)
        if live is None or not live.get("deployed_app_config"):
            return f"live app '{record.name}' is missing"
        config = live["deployed_app_config"]
        routing = routing_of(config)
        expected = record.outputs.get("model_version")
        if routing.live_version != expected or routing.weights.get(routing.primary) != 100:
            return f"live app differs: serves model version {routing.live_version}, expected {expected}"
        if _keys_changed(record, config):
            return f"live app differs: the API keys in ${record.spec['auth']['api_keys_env']} changed"
        if rotated := _provider_keys_rotated(config):
            return f"live app differs: the provider key in ${rotated} changed"
        routed = gateway_entries_of((apps.get(GATEWAY_APP) or {}).get("deployed_app_config")).get(record.name)
        if routed is None or expected not in routed.get("model_ids", ()):
            return f"live app differs: the gateway does not route '{record.name}' (model version {expected})"
        if config_digest(config) != record.outputs.get("serve_config_digest"):
            return "live app differs: its Serve config was changed outside llmops"
        return _provider_drift(record, project)


def _guardrail_policies(resource: Resource, ctx: ApplyContext) -> list[dict]:
    """The compiled policy of each Guardrail the Deployment names, in order; each must have passed its cases."""
    policies = []
    for name in resource.spec.guardrails:
        key = f"Guardrail/{name}"
        try:
            outputs = ctx.outputs_of(key)
        except KeyError as exc:
            raise GateFailed(f"{key} has no result; apply it before {resource.key}") from exc
        if not outputs.get("passed"):
            raise GateFailed(f"{key} did not pass its test cases; nothing changed live")
        policies.append(outputs["policy"])
    return policies


def _digest(policy: dict) -> str:
    from ..fingerprint import canonical_json

    return hashlib.sha256(canonical_json(policy).encode()).hexdigest()


def _load_messages(ctx: ApplyContext, spec: dict) -> list[list[dict]] | None:
    """What a rollout's load test asks: the deployment's eval questions (none without a load test)."""
    if not spec["rollout"].get("load_test"):
        return None
    from ..loadtest.messages import load_messages

    return load_messages(ctx.store, ctx.records, spec)


def _load_history(record: ResourceRecord | None, outcome, target) -> list[dict]:
    """The record's load tests (`llmops loadtest` adds to them too), newest last, with this rollout's."""
    from ..loadtest.results import with_load_test

    outputs = record.outputs if record else {}
    for result in outcome.load_tests:
        outputs = with_load_test(outputs, {**result, "model_version": target.version, "time": time.time()})
    return outputs.get("load_tests") or []


def _provider_drift(record: ResourceRecord, project: Project) -> str | None:
    """A served provider model (or provider fallback) that its provider stopped listing."""
    from ..providers.client import Upstream
    from ..providers.catalog import unlisted_drift

    served = record.outputs.get("served") or {}
    chain = [served] + list(served.get("fallbacks") or [])
    upstreams = [Upstream.from_json(ref["upstream"]) for ref in chain if ref.get("upstream")]
    return unlisted_drift(upstreams, project) if upstreams else None


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _check_gate(resource: Resource, ctx: ApplyContext, fingerprint: str) -> None:
    gate = resource.spec.gate
    if gate is None:
        return
    key = f"Evaluation/{gate}"
    try:
        result = ctx.outputs_of(key)
    except KeyError as exc:
        raise GateFailed(f"{key} has no result for the current model; apply it before {resource.key}") from exc
    shown = fingerprint if fingerprint.startswith("provider:") else fingerprint[:12]
    if result.get("model_fingerprint") != fingerprint:
        raise GateFailed(f"{key} evaluated another model version than {shown}; re-apply the evaluation, or gate "
                         "with one that scores this model")
    if not result.get("passed"):
        raise GateFailed(f"model version {shown} did not pass {key}; nothing changed live")


def _fallback(model: str, prompt: dict, ctx: ApplyContext):
    """A ModelRef that answers when the provider fails: another provider's model (asked with the
    Deployment's Prompt), a model ref (ditto) or a TuningJob's published model (asked its own way)."""
    from ..serving.config import ModelRef
    from ..specs.tuning import is_model_ref
    from ..providers.catalog import upstream_of

    if model.startswith("provider:"):
        upstream = upstream_of(model, ctx.resources)
        return ModelRef(version=upstream.label, prompt=prompt, upstream=upstream.to_json(), label=upstream.label)
    if is_model_ref(model):
        ref = _absolute_ref(model, ctx)
        return ModelRef(version=_identity(ref, prompt, None)[:12], base=ref, store_root=str(ctx.store.root),
                        prompt=prompt, label=model)
    key = f"TuningJob/{model}"
    fingerprint = ctx.fingerprint(key)
    model_dir = ctx.artifact_dir(key)
    if not model_dir.is_dir():
        raise DeploymentError(f"the fallback {key} ({fingerprint[:12]}) has no published model; apply it first")
    return ModelRef(version=fingerprint[:12], fingerprint=fingerprint, path=str(model_dir), store_url=ctx.store.url,
                    label=f"{model} ({fingerprint[:12]})")


def _check_provider_gate(resource: Resource, ctx: ApplyContext, upstream) -> None:
    """A gated provider deployment serves what its Evaluation scored: the same alias pinned to the
    same upstream id, asked with the same Prompt (a prompt-only deployment *is* its prompt)."""
    from ..evaluation.contenders import provider_label

    gate = resource.spec.gate
    if gate is None:
        return
    _check_gate(resource, ctx, provider_label(upstream))
    scored = ctx.outputs_of(f"Evaluation/{gate}").get("template_hash")
    if scored != ctx.resources[f"Prompt/{resource.spec.prompt}"].spec.template_hash():
        raise GateFailed(f"Evaluation/{gate} scored {upstream.label} with another prompt than Prompt/{resource.spec.prompt}; "
                         "gate with an Evaluation of this prompt (nothing changed live)")


def _check_prompt(resource: Resource, ctx: ApplyContext, model_key: str) -> None:
    if resource.spec.allow_prompt_mismatch:
        return
    tuned_outputs = ctx.outputs.get(model_key) or _record_outputs(ctx, model_key)
    tuned = tuned_outputs.get("template_hash")
    prompt_key = f"Prompt/{resource.spec.prompt}"
    wanted = (ctx.outputs.get(prompt_key) or _record_outputs(ctx, prompt_key)).get("template_hash")
    if prompt_key in ctx.resources and tuned_outputs.get("chat_template_sha256"):
        # A tuned chat prompt's hash covers the model's chat template; hash the Prompt through it too.
        wanted = ctx.resources[prompt_key].spec.template_hash(tuned_outputs["chat_template_sha256"])
    if tuned and wanted and tuned != wanted:
        raise DeploymentError(
            f"{prompt_key} differs from the prompt {model_key} was tuned with; "
            "serve the model with its own prompt or set allow_prompt_mismatch: true"
        )


def _record_outputs(ctx: ApplyContext, key: str) -> dict:
    try:
        return ctx.outputs_of(key)
    except KeyError:
        return {}


def _knowledge(resource: Resource, ctx: ApplyContext) -> dict | None:
    from .knowledge_base import published_index

    name = resource.spec.knowledge_base
    return published_index(name, ctx) if name else None


def _served_prompt(resource: Resource, ctx: ApplyContext) -> dict:
    return ctx.resources[f"Prompt/{resource.spec.prompt}"].spec.saved()


def _usable_engine(engine: str, ctx: ApplyContext) -> str:
    """`engine`, once this cluster can run it (checked before the live deployment is touched)."""
    problem = None
    if engine == "llama-cpp":
        from ..serving.engines.llama_cpp import llama_cpp_problem

        problem = llama_cpp_problem()
    elif engine == "vllm":
        import ray

        from .. import raycluster
        from ..serving.engines.vllm import vllm_problem

        raycluster.connect(ctx.project)
        problem = vllm_problem(ray.cluster_resources())
    if problem:
        raise DeploymentError(f"{problem}; the live version keeps serving")
    return engine


def _check_replica_fits(resource: Resource, ctx: ApplyContext) -> None:
    """Replicas asking for custom resources no node has would leave Serve waiting forever. While a
    version is live, the new one comes up in the other slot beside it: both slots' replicas must fit."""
    custom = resource.spec.resources.custom
    if not custom:
        return
    from .. import raycluster

    raycluster.connect(ctx.project)
    record = ctx.records.get(resource.key)
    replicas = resource.spec.replicas.min * (2 if record and record.outputs.get("served") else 1)
    raycluster.check_fits({name: amount * replicas for name, amount in custom.items()},
                          f"{resource.key}'s {replicas} model replica(s)", local=False,
                          remedy="Lower spec.resources.custom or start nodes that declare them (`ray start --resources`)")


def _absolute_ref(ref: str, ctx: ApplyContext) -> str:
    # Serve replicas do not run in the project root: make path: and gguf: refs absolute.
    kind, _, path = ref.partition(":")
    if kind in ("path", "gguf") and not Path(path).is_absolute():
        return f"{kind}:{ctx.root / path}"
    return ref


def _identity(model: str, prompt: dict | None, knowledge: dict | None, engine: str = "transformers") -> str:
    """A served version's identity: the model, the prompt it is asked with, the index it reads, the engine
    that runs it (named only when not the default, so versions served before engines keep their names)."""
    from ..fingerprint import canonical_json

    parts = {"model": model, "prompt": prompt, "knowledge": knowledge and {k: v for k, v in knowledge.items() if k != "path"}}
    if engine != "transformers":
        parts["engine"] = engine
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def _knowledge_fingerprint(target) -> str | None:
    return target.knowledge["fingerprint"] if target.knowledge else None


def _shown(target) -> dict:
    """A ModelRef as the record keeps it (no test-only fault rate)."""
    return {k: v for k, v in target.to_json().items() if k != "fault_error_rate"}


def _previous_served(record: ResourceRecord | None, outcome, target) -> dict | None:
    """What served before this apply, for `llmops rollback` (None when nothing else ever did)."""
    if outcome.previous is not None and outcome.previous.version != target.version:
        return _shown(outcome.previous)
    if record is None:
        return None
    before = record.outputs
    if before.get("model_version") == target.version:  # same version re-applied (drift restore, settings change)
        return before.get("previous_served") or _legacy_served(before, "previous_model_fingerprint")
    return before.get("served") or _legacy_served(before, "model_fingerprint")


def _legacy_served(outputs: dict, key: str) -> dict | None:
    # Records written before `served` existed: a tuned model asked its own way.
    fingerprint = outputs.get(key)
    return {"version": fingerprint[:12], "fingerprint": fingerprint} if fingerprint else None


def _keys_changed(record: ResourceRecord, config: dict) -> bool:
    from ..serving.config import INGRESS, hash_key

    auth = record.spec.get("auth")
    if not isinstance(auth, dict) or auth.get("api_keys_env") not in os.environ:
        return False  # open endpoint, or no keys here to compare with (e.g. a CI plan job)
    keys = [k.strip() for k in os.environ[auth["api_keys_env"]].split(",") if k.strip()]
    ingress = next((d for d in config.get("deployments", []) if d["name"] == INGRESS), {})
    live = (ingress.get("user_config") or {}).get("api_key_sha256") or []
    return sorted(hash_key(k) for k in keys) != sorted(live)


def _provider_keys_rotated(config: dict) -> str | None:
    """The env var of a provider key whose value here is not the one the live replicas were given
    (compared by SHA-256, as the slot's config holds it), or None."""
    from ..serving.config import hash_key

    for deployment in config.get("deployments", []):
        live = (deployment.get("user_config") or {}).get("provider_key_sha256") or {}
        for name, digest in live.items():
            here = os.environ.get(name)
            if here and hash_key(here) != digest:
                return name
    return None


def _write_artifacts(staging: Path, config: dict, outcome) -> None:
    # The applied Serve config, minus the key hashes (not secret, but nobody needs them).
    redacted = json.loads(json.dumps(config))
    for deployment in redacted["deployments"]:
        user_config = deployment.get("user_config") or {}
        if user_config.get("api_key_sha256") is not None:
            user_config["api_key_sha256"] = f"<{len(user_config['api_key_sha256'])} key hashes>"
    (staging / "serve_app.json").write_text(json.dumps(redacted, indent=2))
    (staging / "rollout.json").write_text(json.dumps({"primary": outcome.routing.primary, "steps": outcome.steps}, indent=2))
