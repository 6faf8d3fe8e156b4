"""Which store backs a URL: the one place that knows both backends.

`artifacts.py` (the interface and the local backend) and `remote.py` (object stores) do not
import each other's callers; the engine, serving and workers open stores through here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from .artifacts import ArtifactStore, LocalStore
from .remote import RemoteStore

if TYPE_CHECKING:
    from ..project import Project


def open_store(project: "Project") -> ArtifactStore:
    """The store the project names (LLMOPS_ARTIFACT_STORE wins over llmops.yaml)."""
    url = project.artifact_store_url()
    if is_local_url(url):
        return LocalStore(url, Path(urlparse(url).path))
    return RemoteStore(url, project.state_dir / "store-cache")


def is_local_url(url: str) -> bool:
    return urlparse(url).scheme in ("", "file", "local")


def object_on_this_node(store_url: str | None, fingerprint: str | None, path: str) -> Path:
    """A published object's directory where this code runs (a Ray worker, a Serve replica):
    `path` when it is here (the machine that ran apply, or a shared mount), else fetched from
    the object store into this node's cache. Nodes read the store with their own credentials."""
    here = Path(path)
    if here.is_dir() or not store_url or not fingerprint or is_local_url(store_url):
        return here
    return RemoteStore(store_url, node_cache_dir()).local_path(fingerprint)


def node_cache_dir() -> Path:
    return Path(os.environ.get("LLMOPS_CACHE_DIR") or Path.home() / ".cache" / "llmops") / "store-cache"
