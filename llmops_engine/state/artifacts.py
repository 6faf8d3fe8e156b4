"""Artifact store: outputs addressed by fingerprint, plus the resource records (refs).

Layout under the store root:
    objects/<fingerprint>/...      published outputs (immutable once published)
    refs/<Kind>/<name>.json        the ResourceRecord last applied for that resource
    locks/                         the apply lease
Local directories and file:// URLs are supported; the class is the seam where an
object-store backend plugs in.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ProjectError
from .records import ResourceRecord


class ArtifactStore:
    def __init__(self, url: str):
        self.url = url
        self.root = _local_root(url)
        for sub in ("objects", "refs", "locks", "staging"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # objects ---------------------------------------------------------------
    def local_path(self, fingerprint: str) -> Path:
        return self.root / "objects" / fingerprint

    def has(self, fingerprint: str) -> bool:
        return self.local_path(fingerprint).is_dir()

    def staging_dir(self, fingerprint: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{fingerprint[:12]}-", dir=self.root / "staging"))

    def publish(self, fingerprint: str, staging: Path) -> Path:
        """Atomically move a finished staging directory to its fingerprint."""
        target = self.local_path(fingerprint)
        if target.exists():
            # Same fingerprint means same content; keep the published copy.
            shutil.rmtree(staging, ignore_errors=True)
            return target
        os.replace(staging, target)
        return target

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    # refs ------------------------------------------------------------------
    def _ref_path(self, kind: str, name: str) -> Path:
        return self.root / "refs" / kind / f"{name}.json"

    def read_records(self) -> dict[str, ResourceRecord]:
        records = {}
        for path in sorted((self.root / "refs").glob("*/*.json")):
            try:
                record = ResourceRecord.model_validate_json(path.read_text())
            except (OSError, ValueError):
                continue  # a torn or foreign file is not a record; plan treats it as absent
            records[record.key] = record
        return records

    def write_record(self, record: ResourceRecord) -> None:
        path = self._ref_path(record.kind, record.name)
        atomic_write(path, record.model_dump_json(indent=2))

    def delete_record(self, kind: str, name: str) -> None:
        self._ref_path(kind, name).unlink(missing_ok=True)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _local_root(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else url)
    raise ProjectError(
        f"artifact store scheme '{parsed.scheme}://' is not supported yet; use a directory or file:// URL"
    )
