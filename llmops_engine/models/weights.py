"""A model directory's identity: the hash that lineage records and base-model refs resolve to.

Its own module because both the builtin materializer and the reference resolver need it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..digests import feed


def weights_hash(model_dir: Path) -> str:
    """sha256 over the weight and config files of a model directory, in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    for path in files:
        if path.name.startswith("llmops_"):
            continue
        digest.update(path.name.encode() + b"\0")
        feed(digest, path)
    return digest.hexdigest()
