"""Provider: a hosted OpenAI-compatible endpoint whose models llmops serves, evaluates and watches.

A Deployment with `model: provider:<name>/<alias>` is a prompt-only deployment (our keys, prompt,
log and metrics in front of the provider); an Evaluation may score a provider model as its
candidate or as a variant. `models` pins each alias to an upstream model id, so that the id a
team built on is reviewed in git, and `plan` can say when the provider stops listing it.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, PositiveInt, field_validator

from .base import EnvVarName, KindSpec, StrictModel

ALIAS = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
PROVIDER_REF = r"^provider:([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)/([A-Za-z0-9][A-Za-z0-9_.-]{0,62})$"
MAX_MODELS = 64


def is_provider_ref(value: str) -> bool:
    """Whether a `model:` value names a provider's model (provider:<name>/<alias>)."""
    return re.match(PROVIDER_REF, value) is not None


def provider_ref(value: str) -> tuple[str, str] | None:
    """(provider name, alias) of a provider:<name>/<alias> ref; None for anything else."""
    match = re.match(PROVIDER_REF, value)
    return (match.group(1), match.group(3)) if match else None


class RateLimit(StrictModel):
    requests_per_minute: PositiveInt = Field(
        le=1_000_000, description="At most this many calls a minute from each serving replica (and from an evaluation)."
    )


class ProviderSpec(KindSpec):
    kind: ClassVar[str] = "Provider"

    type: Literal["openai-compatible"] = Field(description="Any endpoint speaking the OpenAI chat completions API.")
    base_url: str = Field(max_length=2048, description="The API's base URL, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: EnvVarName | None = Field(
        default=None, description="Environment variable holding the provider's API key (sent as a Bearer token). "
                                  "Its value never reaches state, logs, plans or errors.",
    )
    models: dict[str, str] = Field(
        min_length=1, max_length=MAX_MODELS,
        description="Alias -> pinned upstream model id; specs name a model as provider:<name>/<alias>.",
    )
    timeout_s: float = Field(default=30, gt=0, le=600, description="Per attempt; between chunks of a stream.")
    max_retries: int = Field(default=2, ge=0, le=10, description="More attempts after a 429, a 5xx or a timeout "
                                                                  "(exponential backoff; Retry-After honoured).")
    rate_limit: RateLimit | None = None

    @field_validator("base_url")
    @classmethod
    def _plain_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"'{value}' is not an http(s) URL with a host, e.g. http://127.0.0.1:8000/v1")
        if parts.username or parts.password:
            raise ValueError("base_url must not carry credentials; name the key's environment variable in api_key_env")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("models")
    @classmethod
    def _aliases_and_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, model in value.items():
            if not re.match(ALIAS, alias):
                raise ValueError(f"alias '{alias}' must be letters, digits, '_', '.' or '-' (at most 63)")
            if not model.strip() or len(model) > 256 or any(ch.isspace() for ch in model):
                raise ValueError(f"models.{alias}: '{model}' is not an upstream model id (non-empty, no spaces, ≤ 256)")
        return value

    def secret_env(self) -> list[str]:
        return [self.api_key_env] if self.api_key_env else []
