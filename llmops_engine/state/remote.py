"""An artifact store at any fsspec URL that is not a local path (s3://, gs://, az://, …).

Credentials and endpoints come only from the environment, read by the backend itself
(AWS_ACCESS_KEY_ID / AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, FSSPEC_<PROTOCOL>_<OPTION>);
nothing secret is in llmops.yaml, records or messages.

Object stores have no atomic directory rename, so an object is published by uploading its
files and then writing `manifests/<fingerprint>.json` (names, sizes, sha256) last: the
manifest's presence is what "published" means, a torn upload is invisible, and a fetch is
verified against it. Published objects are cached under the project's state dir, because
Ray workers and Serve replicas load models by path.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from ..digests import file_sha256
from ..errors import LLMOpsError, ProjectError, StoreError
from .artifacts import ArtifactStore, move_into_place, parse_records, replace_with_copy
from .lock import LeaseFiles
from .records import ResourceRecord

MANIFEST_FORMAT = 1


class RemoteStore(ArtifactStore):
    def __init__(self, url: str, cache_dir: Path):
        self.fs, self.base = open_filesystem(url)
        self.url = url.rstrip("/")
        self.root = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:16]
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        self._published: set[str] | None = None
        self._tokens: dict[str, str | None] = {}
        self._index_stale = False

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.base.rstrip("/"), *parts)

    @contextmanager
    def _boundary(self, doing: str) -> Iterator[None]:
        try:
            yield
        except LLMOpsError:
            raise
        except Exception as exc:  # noqa: BLE001 - every backend has its own exception types
            raise StoreError(
                f"artifact store {self.url}: {doing} failed: {type(exc).__name__}: {exc}; check the URL, that the "
                "bucket exists, and the credentials in the environment"
            ) from exc

    # objects ---------------------------------------------------------------
    def has(self, fingerprint: str) -> bool:
        if self._published is None:
            with self._boundary("listing published objects"):
                names = self._list(self._path("manifests"))
            self._published = {posixpath.basename(n).removesuffix(".json") for n in names if n.endswith(".json")}
        return fingerprint in self._published

    def _list(self, path: str) -> list[str]:
        try:
            return self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []

    def local_path(self, fingerprint: str) -> Path:
        target = self.root / "objects" / fingerprint
        if not target.is_dir() and self.has(fingerprint):
            with self._boundary(f"fetching object {fingerprint[:12]}"):
                self._fetch(fingerprint, target)
        return target

    def _fetch(self, fingerprint: str, target: Path) -> None:
        manifest = json.loads(self.fs.cat_file(self._path("manifests", f"{fingerprint}.json")))
        download = self.staging_dir(fingerprint)
        try:
            for name in [*manifest["dirs"], *manifest["files"]]:
                if not (download / name).resolve().is_relative_to(download.resolve()):
                    raise StoreError(f"artifact store {self.url}: object {fingerprint[:12]} names a file outside "
                                     f"itself ({name!r}); refusing to fetch it")
            for folder in manifest["dirs"]:
                (download / folder).mkdir(parents=True, exist_ok=True)
            names = sorted(manifest["files"])
            if names:
                self.fs.get([self._path("objects", fingerprint, n) for n in names], [str(download / n) for n in names])
            for name, expected in manifest["files"].items():
                if file_digest(download / name) != expected:
                    raise StoreError(
                        f"artifact store {self.url}: object {fingerprint[:12]} file {name} does not match its "
                        "manifest (corrupted or overwritten in the store); re-apply with the object removed"
                    )
            move_into_place(download, target)
        finally:
            self.discard(download)

    def publish(self, fingerprint: str, staging: Path) -> Path:
        manifest_path = self._path("manifests", f"{fingerprint}.json")
        with self._boundary(f"publishing object {fingerprint[:12]}"):
            if not self.fs.exists(manifest_path):
                manifest = build_manifest(staging)
                names = sorted(manifest["files"])
                if names:
                    self.fs.put([str(staging / n) for n in names], [self._path("objects", fingerprint, n) for n in names])
                manifest.update(fingerprint=fingerprint, published_at=time.time())
                self.fs.pipe_file(manifest_path, json.dumps(manifest, indent=1).encode())
        if self._published is not None:
            self._published.add(fingerprint)
        return move_into_place(staging, self.root / "objects" / fingerprint)

    def keep_report(self, fingerprint: str, source: Path) -> Path:
        local = replace_with_copy(source, self.root / "reports" / fingerprint)
        remote = self._path("reports", fingerprint)
        with self._boundary("keeping the failed report"):
            if self.fs.exists(remote):
                self.fs.rm(remote, recursive=True)
            files = sorted(p for p in source.rglob("*") if p.is_file())
            if files:
                self.fs.put([str(p) for p in files], [posixpath.join(remote, p.relative_to(source).as_posix()) for p in files])
        return local

    def report_url(self, fingerprint: str) -> str | None:
        return f"{self.url}/reports/{fingerprint}/"

    # refs ------------------------------------------------------------------
    def _ref_path(self, kind: str, name: str) -> str:
        return self._path("refs", kind, f"{name}.json")

    def read_records(self) -> dict[str, ResourceRecord]:
        return parse_records(self._record_texts().values())

    def _record_texts(self) -> dict[str, str]:
        """Every ref's text, by path. The index written after each apply holds the texts with
        the listing token (ETag/generation + size) they had, so a plan is one listing and one
        read; only refs whose token changed since are read one by one."""
        with self._boundary("reading resource records"):
            try:
                listing = {p: i for p, i in self.fs.find(self._path("refs"), detail=True).items() if p.endswith(".json")}
            except FileNotFoundError:
                listing = {}
            index = self._read_index()
            texts, tokens, stale = {}, {}, []
            for path, info in listing.items():
                tokens[path] = listing_token(info)
                cached = index.get(path)
                if tokens[path] is not None and cached and cached["token"] == tokens[path]:
                    texts[path] = cached["text"]
                else:
                    stale.append(path)
            fetched = self.fs.cat(stale, on_error="omit") if stale else {}
        texts.update({path: data.decode() for path, data in fetched.items()})
        self._tokens = tokens
        self._index_stale = self._index_stale or bool(stale) or len(index) != len(listing)
        return texts

    def _read_index(self) -> dict:
        try:
            index = json.loads(self.fs.cat_file(self._path("refs-index.json")))
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}  # torn or foreign: read every ref instead
        return index.get("refs", {}) if index.get("format") == MANIFEST_FORMAT else {}

    def write_index(self) -> str | None:
        if not self._index_stale:
            return None
        try:
            texts = self._record_texts()
            refs = {p: {"token": self._tokens[p], "text": t} for p, t in texts.items() if self._tokens.get(p)}
            with self._boundary("writing the records index"):
                self.fs.pipe_file(self._path("refs-index.json"), json.dumps({"format": MANIFEST_FORMAT, "refs": refs}).encode())
        except StoreError as exc:
            return f"note: {exc} (the next plan reads the records one by one)"
        self._index_stale = False
        return None

    def write_record(self, record: ResourceRecord) -> None:
        with self._boundary(f"writing the record of {record.key}"):
            self.fs.pipe_file(self._ref_path(record.kind, record.name), record.model_dump_json(indent=2).encode())
        self._index_stale = True

    def delete_record(self, kind: str, name: str) -> None:
        with self._boundary(f"deleting the record of {kind}/{name}"):
            try:
                self.fs.rm_file(self._ref_path(kind, name))
            except FileNotFoundError:
                pass
        self._index_stale = True

    def lease_files(self) -> LeaseFiles:
        return RemoteLeaseFiles(self, self._path("locks"))

    def ray_storage(self) -> tuple[str, Any]:
        """Run folders and checkpoints in the object store itself, so a killed training resumes
        on any machine and every node of a cluster can write them."""
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return self._path("ray_runs"), PyFileSystem(FSSpecHandler(self.fs))


class RemoteLeaseFiles:
    """Create-if-absent is a conditional write (If-None-Match on S3, generation 0 on GCS)."""

    def __init__(self, store: RemoteStore, directory: str):
        self.store = store
        self.fs = store.fs
        self.directory = directory

    def create(self, name: str, data: bytes) -> bool:
        path = posixpath.join(self.directory, name)
        with self.store._boundary("creating the apply lease"):
            try:
                with self.fs.open(path, "xb") as handle:
                    handle.write(data)
                return True
            except FileExistsError:
                return False

    def read(self, name: str) -> bytes | None:
        with self.store._boundary("reading the apply lease"):
            try:
                return self.fs.cat_file(posixpath.join(self.directory, name))
            except FileNotFoundError:
                return None

    def replace(self, name: str, data: bytes) -> None:
        with self.store._boundary("renewing the apply lease"):
            self.fs.pipe_file(posixpath.join(self.directory, name), data)

    def delete(self, name: str) -> None:
        with self.store._boundary("removing the apply lease"):
            try:
                self.fs.rm_file(posixpath.join(self.directory, name))
            except FileNotFoundError:
                pass


def open_filesystem(url: str):
    import fsspec

    if urlsplit(url).netloc.rpartition("@")[0]:
        raise ProjectError(
            f"artifact store {redact(url)}: put credentials in environment variables (e.g. AWS_ACCESS_KEY_ID, "
            "GOOGLE_APPLICATION_CREDENTIALS), not in the URL"
        )
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        raise ProjectError(
            f"artifact store {url}: the fsspec backend for {scheme}:// is not installed: {exc}"
            + (f" (or pip install 'llmops-engine[{scheme}]')" if scheme in ("s3", "gs") else "")
        ) from exc
    except ValueError as exc:
        raise ProjectError(f"artifact store {url}: {exc}; use a directory, file://, s3://, gs:// or another fsspec URL") from exc


def listing_token(info: dict) -> str | None:
    """What changes when an object is rewritten, from a listing entry (S3 ETag, GCS
    generation, Azure etag, or a modification time), with its size; None if the backend
    gives none — then the ref is always read."""
    for key in ("ETag", "etag", "generation", "mtime", "LastModified", "last_modified", "updated", "created"):
        if info.get(key):
            return f"{info[key]}:{info.get('size')}"
    return None


def build_manifest(staging: Path) -> dict:
    files, dirs = {}, []
    for path in sorted(staging.rglob("*")):
        relative = path.relative_to(staging).as_posix()
        if path.is_dir():
            dirs.append(relative)
        elif path.is_file():
            files[relative] = file_digest(path)
    return {"format": MANIFEST_FORMAT, "files": files, "dirs": dirs}


def file_digest(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def redact(url: str) -> str:
    """Never echo credentials embedded in a URL (user:secret@host)."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", url)
