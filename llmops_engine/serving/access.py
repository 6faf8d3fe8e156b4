"""Who may call which deployment through the gateway, and which deployment a request's
`model` selects.

Pure (no Ray, no HTTP) so the decisions are one scenario table in the tests. The gateway
knows every deployment only by its entry (serving.config.gateway_entry): the SHA-256 hashes
of its API keys (None = open) and the `model` values that select it. A caller whose key is
valid for no deployment learns nothing about which deployments exist.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from .openai_api import APIError

MISSING_KEY = "invalid or missing API key (send it as 'Authorization: Bearer <key>')"


class FrontError(APIError):
    """An APIError with the envelope types of the statuses only the HTTP front returns."""

    TYPES = {**APIError.TYPES, 403: "permission_error", 408: "invalid_request_error", 499: "invalid_request_error"}


@dataclass(frozen=True)
class Access:
    names: tuple[str, ...]  # deployments this caller may use: open ones, and those its key opens
    authenticated: bool  # the key matched some deployment's key


def bearer_key(authorization: str) -> str:
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""


def key_matches(key: str, hashes: list[str]) -> bool:
    """Whether `key` is one of the keys hashed in `hashes`: every hash is compared, each in
    constant time, so timing says nothing about which (or whether one) matched."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    matched = False
    for known in hashes:
        matched |= hmac.compare_digest(digest, known)
    return bool(key) and matched


def access_of(entries: dict[str, dict[str, Any]], authorization: str) -> Access:
    key = bearer_key(authorization)
    names, authenticated = [], False
    for name in sorted(entries):
        hashes = entries[name].get("api_key_sha256")
        if hashes is None:
            names.append(name)
        elif key_matches(key, hashes):
            names.append(name)
            authenticated = True
    return Access(tuple(names), authenticated)


def require_some(access: Access) -> None:
    if not access.names:
        raise FrontError(401, MISSING_KEY, "invalid_api_key")


def select(entries: dict[str, dict[str, Any]], access: Access, model: str) -> str:
    """The deployment `model` names (its name, or a model id it advertises) that this caller
    may use; raises the OpenAI error a client should see otherwise."""
    require_some(access)
    if model in entries:
        candidates = [model]  # a deployment's name wins over another's model id
    else:
        candidates = [name for name in sorted(entries) if model in entries[name].get("model_ids", ())]
    permitted = [name for name in candidates if name in access.names]
    if len(permitted) == 1:
        return permitted[0]
    if permitted:
        raise FrontError(400, f"model '{model}' is served by several deployments ({', '.join(permitted)}); "
                              "use a deployment name as `model`", "ambiguous_model", "model")
    if candidates and not access.authenticated:
        raise FrontError(401, MISSING_KEY, "invalid_api_key")
    if candidates:
        raise FrontError(403, f"this API key may not use model '{model}'", "model_not_permitted", "model")
    raise FrontError(404, f"model '{model}' does not exist; use one of: {', '.join(access.names)}",
                     "model_not_found", "model")
