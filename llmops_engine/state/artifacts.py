"""Artifact store: outputs addressed by fingerprint, plus the resource records (refs).

Layout under the store URL:
    objects/<fingerprint>/...      published outputs (immutable once published)
    refs/<Kind>/<name>.json        the ResourceRecord last applied for that resource
    locks/                         the apply lease
    reports/<fingerprint>/         failed evaluation reports (outside objects/: never "published")

Two backends share this interface (`state/stores.py` picks one for a URL). `LocalStore` is a
directory (or file:// URL, e.g. on a shared mount). `RemoteStore` (state/remote.py) is any other fsspec URL (s3://, gs://, …);
it keeps a local cache of objects because Ray workers and Serve replicas read models by
path. Either way `root` is a local directory: staging, the cache of objects, Ray run
folders and materialized base models live under it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .lock import ApplyLock, LeaseFiles
from .records import ResourceRecord



class ArtifactStore:
    """What the engine needs from a store; see the module docstring for the layout."""

    url: str
    root: Path

    def local_path(self, fingerprint: str) -> Path:
        """Local directory of a published object (fetched into the cache first if remote)."""
        raise NotImplementedError

    def has(self, fingerprint: str) -> bool:
        raise NotImplementedError

    def publish(self, fingerprint: str, staging: Path) -> Path:
        raise NotImplementedError

    def read_records(self) -> dict[str, ResourceRecord]:
        raise NotImplementedError

    def write_record(self, record: ResourceRecord) -> None:
        raise NotImplementedError

    def delete_record(self, kind: str, name: str) -> None:
        raise NotImplementedError

    def lease_files(self) -> LeaseFiles:
        raise NotImplementedError

    def ray_storage(self) -> tuple[str, Any]:
        """Ray Train's (storage_path, storage_filesystem): run folders and checkpoints."""
        raise NotImplementedError

    def write_index(self) -> str | None:
        """Summarize the records for fast reads; called under the apply lock after writes.
        Only an optimization: returns a note instead of failing if it cannot be written."""
        return None

    def keep_report(self, fingerprint: str, source: Path) -> Path:
        """Keep a failed run's results (replacing an older one); returns the local copy."""
        raise NotImplementedError

    def report_url(self, fingerprint: str) -> str | None:
        """Where a kept report is for other machines, if not at the local path."""
        return None

    # shared ---------------------------------------------------------------
    def staging_dir(self, fingerprint: str) -> Path:
        staging = self.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{fingerprint[:12]}-", dir=staging))

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def lock(self, ttl_s: float = 120.0) -> ApplyLock:
        return ApplyLock(self.lease_files(), ttl_s, where=self.url)


class LocalStore(ArtifactStore):
    def __init__(self, url: str, root: Path):
        self.url = url
        self.root = root
        for sub in ("objects", "refs", "locks", "staging"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def local_path(self, fingerprint: str) -> Path:
        return self.root / "objects" / fingerprint

    def has(self, fingerprint: str) -> bool:
        return self.local_path(fingerprint).is_dir()

    def publish(self, fingerprint: str, staging: Path) -> Path:
        """Atomically move a finished staging directory to its fingerprint."""
        return move_into_place(staging, self.local_path(fingerprint))

    def _ref_path(self, kind: str, name: str) -> Path:
        return self.root / "refs" / kind / f"{name}.json"

    def read_records(self) -> dict[str, ResourceRecord]:
        texts = []
        for path in (self.root / "refs").glob("*/*.json"):
            try:
                texts.append(path.read_bytes())
            except OSError:
                continue  # deleted while listing
        return parse_records(texts)

    def write_record(self, record: ResourceRecord) -> None:
        atomic_write(self._ref_path(record.kind, record.name), record.model_dump_json(indent=2))

    def delete_record(self, kind: str, name: str) -> None:
        self._ref_path(kind, name).unlink(missing_ok=True)

    def lease_files(self) -> LeaseFiles:
        return LocalLeaseFiles(self.root / "locks")

    def keep_report(self, fingerprint: str, source: Path) -> Path:
        return replace_with_copy(source, self.root / "reports" / fingerprint)

    def ray_storage(self) -> tuple[str, Any]:
        return str(self.root / "ray_runs"), None


class LocalLeaseFiles:
    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory

    def create(self, name: str, data: bytes) -> bool:
        # Write a complete temp file, then hard-link it: link() fails if the name exists,
        # so readers never see a half-written lease and only one creator wins.
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.link(tmp, self.directory / name)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None

    def replace(self, name: str, data: bytes) -> None:
        atomic_write(self.directory / name, data.decode())

    def delete(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)


def parse_records(texts) -> dict[str, ResourceRecord]:
    records = {}
    for text in texts:
        try:
            record = ResourceRecord.model_validate_json(text)
        except ValueError:
            continue  # a torn or foreign file is not a record; plan treats it as absent
        records[record.key] = record
    return dict(sorted(records.items()))


def move_into_place(staging: Path, target: Path) -> Path:
    """Rename a finished directory to `target`; if another writer got there first, keep
    theirs (same fingerprint means same content) and drop ours."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(staging, ignore_errors=True)
        return target
    try:
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return target


def replace_with_copy(source: Path, target: Path) -> Path:
    """Copy `source` to `target`, replacing what was there, never leaving a half copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name[:12]}-", dir=target.parent))
    shutil.copytree(source, temporary, dirs_exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(temporary, target)
    return target


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
