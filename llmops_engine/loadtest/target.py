"""Who a load test may send its load to: the deployment's own endpoint, and nothing else.

The target is always this project's own gateway (the `serve:` host and port of llmops.yaml) with the
deployment's name as `model`, built by `deployment_target` for a rollout's load test and for
`llmops loadtest` alike; nothing in it comes from a record. A Deployment record comes from the
artifact store, which other clones and CI jobs share: `target_of` also refuses one whose recorded
endpoint is another address (that deployment is not served here), so that a tampered or stale
record cannot make `llmops loadtest` load something else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import LoadTestError
from ..project import Project
from ..state.records import ResourceRecord


@dataclass(frozen=True)
class Target:
    """An OpenAI-compatible base URL (…/v1) and the `model` that selects the deployment there."""

    base_url: str
    model: str
    api_key: str | None

    def __repr__(self) -> str:  # the key never reaches a log or an error message
        return f"Target(base_url={self.base_url!r}, model={self.model!r}, api_key={'***' if self.api_key else None})"


def target_of(project: Project, record: ResourceRecord | None) -> Target:
    """The load test target of an applied Deployment: its recorded gateway endpoint, its name as
    `model`, and the first key of the env var its `auth.api_keys_env` names."""
    if record is None or record.kind != "Deployment":
        raise LoadTestError("no such Deployment has been applied in this project; run `llmops apply` first")
    endpoint = record.outputs.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise LoadTestError(f"Deployment '{record.name}' has no endpoint in its record (status: {record.status}); "
                            "apply it successfully first")
    refusal = outside_the_project(project, endpoint)
    if refusal:
        raise LoadTestError(f"Deployment '{record.name}': {refusal}; a load test only targets the deployment's own "
                            "address")
    return deployment_target(project, record.name, record.spec)


def deployment_target(project: Project, name: str, spec: dict) -> Target:
    """This project's gateway, `model` = the deployment's name, and the first key of its
    `auth.api_keys_env` (None for `auth: none`)."""
    serve = project.settings.serve
    return Target(base_url=f"http://{serve.host}:{serve.port}/v1", model=name, api_key=_first_key(name, spec))


def outside_the_project(project: Project, url: str) -> str | None:
    """Why `url` is not this project's serve address (http://host:port/…), or None when it is.
    Side-effect free."""
    serve = project.settings.serve
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "its recorded endpoint is not a valid URL"
    if parts.scheme != "http" or parts.username is not None or parts.password is not None or parts.query \
            or parts.fragment:
        return f"its recorded endpoint {_shown(url)} is not a plain http:// URL"
    if (parts.hostname or "").lower() != serve.host.lower() or port != serve.port:
        return (f"its recorded endpoint {_shown(url)} is not this project's serve address "
                f"{serve.host}:{serve.port} (llmops.yaml `serve:`)")
    return None


def _first_key(deployment: str, spec: dict) -> str | None:
    auth = spec.get("auth")
    if not isinstance(auth, dict):
        return None  # `auth: none`: an open endpoint
    name = str(auth.get("api_keys_env", ""))
    keys = [key.strip() for key in os.environ.get(name, "").split(",") if key.strip()]
    if not keys:
        raise LoadTestError(f"Deployment '{deployment}' needs an API key: export ${name} (its auth.api_keys_env) "
                            "with the deployment's keys")
    return keys[0]


def _shown(url: str) -> str:
    """A recorded URL, safe to quote: short and printable (it comes from a shared store)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in url)
    return repr(text if len(text) <= 120 else text[:119] + "…")
