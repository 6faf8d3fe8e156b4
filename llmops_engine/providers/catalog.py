"""Which models a provider lists, and which upstream a `provider:<name>/<alias>` ref names.

Shared by the Provider controller (apply, `plan`), the Deployment controller (apply, `plan` drift of
the provider models it serves, rollback) and evaluations. `require_listed` asks now; `unlisted_drift`
answers from a listing cached for a minute under the state dir, bounded to a few seconds, and raises
LiveStateUnknown when the provider cannot be asked from here (unreachable, or its key is not in this
environment, as in a CI plan job). Plain HTTP (httpx): `plan` imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from urllib.parse import urlsplit

from ..errors import LiveStateUnknown, ProviderError
from ..project import Project
from ..specs.provider import provider_ref
from ..specs.resource import Resource
from .client import Upstream, api_key, list_models_now

OBSERVE_TIMEOUT_S = 3.0  # `plan` waits at most this long for each provider
CACHE_TTL_S = 60.0  # `plan` then `apply` a minute later ask a provider once
APPLY_TIMEOUT_S = 10.0


def upstream_of(ref: str, resources: dict[str, Resource]) -> Upstream:
    """The Upstream a provider:<name>/<alias> ref names, from its Provider spec (validated to exist)."""
    name, alias = provider_ref(ref) or ("", "")
    spec = resources[f"Provider/{name}"].spec
    limit = spec.rate_limit.requests_per_minute if spec.rate_limit else None
    return Upstream(name, alias, spec.base_url, spec.models[alias], spec.api_key_env, spec.timeout_s,
                    spec.max_retries, limit)


def require_listed(upstreams: list[Upstream]) -> list[str]:
    """Raise unless each provider lists its upstream's pinned model (asked now, not cached);
    returns what the last one asked lists (a Provider's apply asks only its own)."""
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
    """'the provider no longer lists the pinned model …' for each upstream whose provider does not
    list it (cached answers, bounded time); LiveStateUnknown when a provider cannot be asked from here."""
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
    # Per base URL and key *name*: two keys may see different listings (the key's value is never used here).
    where_key = f"{upstream.base_url}\x00{upstream.api_key_env or ''}"
    cache = project.state_dir / "providers" / f"{hashlib.sha256(where_key.encode()).hexdigest()[:16]}.json"
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
