"""Provider API keys for the Serve replicas that call providers, kept out of every config and log.

A Serve config — runtime env included — is stored by Ray's GCS, returned by the dashboard's REST
API and logged by Ray's runtime env agent ("Creating runtime env: …"): no place for a secret. The
apply that deploys a provider version hands the keys it has in its own environment to one named,
detached actor that keeps them in memory only; a slot replica asks it for the keys its chain
names. The slot's config carries each key's SHA-256 (like a deployment's API-key hashes), so a
rotated key is a config change — drift for `plan`, then a `reconfigure` that fetches the new one —
and a replica can tell a stale key from the one it was deployed with.

Imports Ray: the serving path only (deploy, slot).
"""

from __future__ import annotations

import hmac
import os

import ray

from ..errors import DeploymentError
from .config import ModelRef, hash_key, provider_key_hashes

KEYS_ACTOR = "llmops-provider-keys"
NAMESPACE = "llmops"
FETCH_TIMEOUT_S = 30


@ray.remote(num_cpus=0, max_restarts=0)
class ProviderKeys:
    """Keys by environment variable name, in this actor's memory only."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}

    def put(self, keys: dict[str, str]) -> None:
        self.keys.update(keys)

    def get(self, names: list[str]) -> dict[str, str]:
        return {name: self.keys[name] for name in names if name in self.keys}


def hand_over(model: ModelRef) -> None:
    """Give the keys a version's chain calls with (from this environment) to the cluster's key
    holder, creating it once."""
    names = sorted(provider_key_hashes(model))  # raises for one that is unset
    if not names:
        return
    holder = ProviderKeys.options(name=KEYS_ACTOR, namespace=NAMESPACE, lifetime="detached",
                                  get_if_exists=True).remote()
    ray.get(holder.put.remote({name: os.environ[name] for name in names}), timeout=FETCH_TIMEOUT_S)


def fetch(hashes: dict[str, str]) -> dict[str, str]:
    """In a replica: the keys whose hashes its config names; a missing or stale one is an error."""
    if not hashes:
        return {}
    holder = ray.get_actor(KEYS_ACTOR, namespace=NAMESPACE)
    keys = ray.get(holder.get.remote(sorted(hashes)), timeout=FETCH_TIMEOUT_S)
    for name, digest in hashes.items():
        if name not in keys or not hmac.compare_digest(hash_key(keys[name]), digest):
            raise DeploymentError(f"the key handed over for ${name} is missing or not the one this version was "
                                  "deployed with; apply again")
    return keys

