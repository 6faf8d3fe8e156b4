"""Fingerprints: a resource's identity is what determines its outputs.

fingerprint = sha256(kind, name, normalized spec, dependency fingerprints, input file hashes)

Labels and descriptions are metadata and deliberately excluded, so editing them never
retrains a model. The normalized spec is the pydantic dump (defaults filled in), so YAML
layout, comments and key order cannot change it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .dvcrecords import tracked_files
from .errors import PlanError
from .graph import dependencies
from .paths import excluding, match_files, pattern_matches
from .specs.resource import Resource

FORMAT_VERSION = "1"


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compute_fingerprint(resource: Resource, dep_fingerprints: Mapping[str, str], inputs: Mapping[str, str]) -> str:
    payload = {
        "v": FORMAT_VERSION,
        "kind": resource.kind,
        "name": resource.name,
        "spec": resource.normalized_spec(),
        "deps": dict(sorted(dep_fingerprints.items())),
        "inputs": dict(sorted(inputs.items())),
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class ContentHasher:
    """Content identity of repository files, cached by (size, mtime) so an unchanged plan stays fast.

    A file tracked by a DVC record is identified by the md5 that record holds, whether it is
    present (and matches) or not yet restored: a fresh clone plans what a restored one does,
    without restoring anything. Any other file (or a tracked one edited since `dvc add`) is
    identified by its sha256.
    """

    def __init__(self, root: Path, cache_file: Path | None = None, skip_dirs: Sequence[Path] = ()):
        self.root = root
        self.cache_file = cache_file
        self.skip_dirs = skip_dirs  # the engine's own output: never an input
        self.tracked = {path: t.md5 for path, t in tracked_files(root).items() if t.md5}
        self._cache: dict[str, list] = {}
        self._dirty = False
        if cache_file and cache_file.is_file():
            try:
                self._cache = json.loads(cache_file.read_text())
            except ValueError:
                self._cache = {}

    def hash_inputs(self, patterns: list[str]) -> dict[str, str]:
        """Map each matched repo-relative path to its identity; a pattern matching nothing maps to 'missing'."""
        result: dict[str, str] = {}
        for pattern in patterns:
            matches = match_files(self.root, pattern)
            if matches.problem:  # validate refuses these first; never hash a file outside the repository
                raise PlanError(matches.problem)
            files = {path.relative_to(self.root).as_posix(): path for path in excluding(matches.files, self.skip_dirs)}
            absent = {rel: md5 for rel, md5 in self.tracked.items()
                      if rel not in files and pattern_matches(rel, pattern)}
            if not files and not absent:
                result[pattern] = "missing"
            for rel, path in files.items():
                result[rel] = self.file_identity(path)
            result |= {rel: f"dvc-md5:{md5}" for rel, md5 in absent.items()}
        return result

    def file_identity(self, path: Path) -> str:
        key = path.relative_to(self.root).as_posix()
        sha256, md5 = self._hashes(path, key)
        recorded = self.tracked.get(key)
        return f"dvc-md5:{md5}" if recorded == md5 else sha256

    def _hashes(self, path: Path, key: str) -> tuple[str, str]:
        stat = path.stat()
        cached = self._cache.get(key)
        if cached and len(cached) == 4 and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
            return cached[2], cached[3]
        sha256, md5 = hashlib.sha256(), hashlib.md5()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha256.update(block)
                md5.update(block)
        # A file modified within the last seconds could change again within the same
        # mtime tick; caching it could hide that edit (git's "racy clean" problem).
        if time.time() - stat.st_mtime > 2:
            self._cache[key] = [stat.st_size, stat.st_mtime_ns, sha256.hexdigest(), md5.hexdigest()]
            self._dirty = True
        return sha256.hexdigest(), md5.hexdigest()

    def save(self) -> None:
        if self.cache_file and self._dirty:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._cache))
            os.replace(tmp, self.cache_file)


def environment_inputs(resource: Resource) -> dict[str, str]:
    return {f"env:{name}": os.environ[name] for name in resource.spec.env_inputs if os.environ.get(name)}


def fingerprint_all(
    by_key: Mapping[str, Resource], order: list[str], hasher: ContentHasher,
    observed_inputs: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Fingerprints (and the input hashes behind them) for every resource, in dependency order.
    `observed_inputs`: inputs that are not files, by resource key (a database extract's hash)."""
    fingerprints: dict[str, str] = {}
    inputs: dict[str, dict[str, str]] = {}
    for key in order:
        resource = by_key[key]
        deps = {dep: fingerprints[dep] for dep in dependencies(resource) if dep in fingerprints}
        inputs[key] = (hasher.hash_inputs(resource.spec.repo_paths()) | environment_inputs(resource)
                       | dict((observed_inputs or {}).get(key, {})))
        fingerprints[key] = compute_fingerprint(resource, deps, inputs[key])
    hasher.save()
    return fingerprints, inputs
