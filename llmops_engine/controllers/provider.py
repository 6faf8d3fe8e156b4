"""Provider controller: check a hosted endpoint's pinned models, and watch them from `plan`.

Apply asks the provider's `/v1/models` and refuses an alias whose pinned upstream id is not
listed, so neither a Deployment nor an Evaluation is switched to a model the provider does not
serve. `observe` (every `plan` and `status`) asks the same question, bounded to a few seconds
and cached briefly under the state dir: a pinned model the provider stopped listing is drift on
the Provider and on each Deployment serving it, before the provider turns it off. An unreachable
provider, or a key not in this environment (a CI plan job), is reported, never a failed plan.
Plain HTTP (httpx) only: `plan` imports this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import LiveStateUnknown, ProviderError
from ..project import Project
from ..providers.client import Upstream, api_key, list_models_now
from ..specs.provider import provider_ref
from ..specs.resource import Resource
from ..state.records import ResourceRecord
from .base import ApplyContext, BaseController, Outputs

OBSERVE_TIMEOUT_S = 3.0  # `plan` waits at most this long for each provider
CACHE_TTL_S = 60.0  # `plan` then `apply` a minute later ask a provider once
APPLY_TIMEOUT_S = 10.0


class ProviderController(BaseController):
    kind = "Provider"

    def apply(self, resource: Resource, ctx: ApplyContext, staging: Path) -> Outputs:
        spec = resource.spec
        upstreams = [upstream_of(f"provider:{resource.name}/{alias}", ctx.resources) for alias in spec.models]
        listed = require_listed(upstreams)
        (staging / "models.json").write_text(json.dumps({"pinned": spec.models, "listed": listed}, indent=2))
        pinned = ", ".join(f"{alias} → {model}" for alias, model in spec.models.items())
        ctx.report(f"{resource.key}: {where(spec.base_url)} lists {len(listed)} models, every pinned one among them ({pinned})")
        return {"base_url": spec.base_url, "models": dict(spec.models), "listed": len(listed)}

    def observe(self, record: ResourceRecord, project: Project) -> str | None:
        spec = record.spec
        upstreams = [Upstream(record.name, alias, spec["base_url"], model, spec.get("api_key_env"))
                     for alias, model in spec["models"].items()]
        return unlisted_drift(upstreams, project)


def upstream_of(ref: str, resources: dict[str, Resource]) -> Upstream:
    """The Upstream a provider:<name>/<alias> ref names, from its Provider spec (validated to exist)."""
    name, alias = provider_ref(ref) or ("", "")
    spec = resources[f"Provider/{name}"].spec
    limit = spec.rate_limit.requests_per_minute if spec.rate_limit else None
    return Upstream(name, alias, spec.base_url, spec.models[alias], spec.api_key_env, spec.timeout_s,
                    spec.max_retries, limit)


def require_listed(upstreams: list[Upstream]) -> list[str]:
    """Raise unless the provider lists every upstream's pinned model (asked now, not cached);
    returns what the (first) provider lists."""
    listed: list[str] = []
    for upstream in upstreams:
        if upstream.api_key_env and api_key(upstream) is None:
            raise ProviderError(f"{upstream.label}: ${upstream.api_key_env} is unset or empty; export the provider's "
                                "API key there", "provider_auth_failed")
        listed = list_models_now(upstream, api_key(upstream), min(upstream.timeout_s, APPLY_TIMEOUT_S))
        if upstream.model not in listed:
            raise ProviderError(f"{upstream.label}: {where(upstream.base_url)} does not list the pinned model "
                                f"'{upstream.model}'{_listing(listed)}; pin a model it lists", "provider_model_not_found")
    return listed


def unlisted_drift(upstreams: list[Upstream], project: Project) -> str | None:
    """'provider gw no longer lists ...' for pinned models the provider does not list (cached
    answers, bounded time); LiveStateUnknown when the provider cannot be asked from here."""
    missing = []
    for upstream in upstreams:
        if upstream.api_key_env and api_key(upstream) is None:
            raise LiveStateUnknown(f"${upstream.api_key_env} is not set here, so the models "
                                   f"{where(upstream.base_url)} lists were not checked")
        listed = _cached_listing(upstream, project)
        if upstream.model not in listed:
            missing.append(f"'{upstream.model}' ({upstream.label} at {where(upstream.base_url)})")
    return f"the provider no longer lists the pinned model {', '.join(missing)}" if missing else None


def _cached_listing(upstream: Upstream, project: Project) -> list[str]:
    cache = project.state_dir / "providers" / f"{hashlib.sha256(upstream.base_url.encode()).hexdigest()[:16]}.json"
    try:
        saved = json.loads(cache.read_text())
        if time.time() - saved["at"] < CACHE_TTL_S and saved["base_url"] == upstream.base_url:
            return list(saved["models"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        listed = list_models_now(upstream, api_key(upstream), min(upstream.timeout_s, OBSERVE_TIMEOUT_S))
    except ProviderError as exc:
        raise LiveStateUnknown(f"could not ask {upstream.label} which models it lists: {exc}") from exc
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"at": time.time(), "base_url": upstream.base_url, "models": listed}))
    partial.replace(cache)
    return listed


def where(base_url: str) -> str:
    """host:port of a provider, for messages (never its path or query)."""
    parts = urlsplit(base_url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _listing(listed: list[str]) -> str:
    shown = ", ".join(sorted(listed)[:8]) + (" …" if len(listed) > 8 else "")
    return f" (it lists: {shown})" if listed else " (it lists none)"
