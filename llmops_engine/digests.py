"""Streaming file digests: one read loop for every place that hashes a file (store manifests,
model identities, GGUF sources), in 1 MiB blocks so a multi-GB file never sits in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def feed(digest, path: Path) -> None:
    """Stream the file at `path` into a hashlib object."""
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    feed(digest, path)
    return digest.hexdigest()
