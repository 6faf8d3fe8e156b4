"""Read DVC's `*.dvc` records without DVC: which files they track, with which md5.

Planning must be read-only, so a DVC-tracked file that a fresh clone lacks is not restored
while planning; its identity comes from the md5 its record holds. The loader uses the same
list to accept a `source.path` that matches no file yet, and apply's bootstrap restores
exactly these files. Records come from pull requests like specs do, so each is read with a
size cap and without YAML aliases, and every path it names must stay in the repository.

Where records are looked for: the repository root (`dvc add` run there) and, as `dvc add
data/x.jsonl` writes `data/x.jsonl.dvc`, folders up to three levels down (hidden folders
skipped, at most MAX_SCANNED entries looked at).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

MAX_RECORD_BYTES = 64 * 1024  # DVC writes a few hundred bytes per record
MAX_DEPTH = 3
MAX_SCANNED = 20_000
MAX_NESTING = 16


@dataclass(frozen=True)
class TrackedFile:
    path: str          # repository-relative, POSIX
    md5: str | None    # None for a tracked directory (md5 ends in ".dir") or a record without one


@dataclass(frozen=True)
class DvcRecord:
    file: Path                    # the .dvc file
    outs: tuple[TrackedFile, ...]
    generator: str | None         # meta.llmops_generator: a builtin generator recreates the file


def records(root: Path) -> list[DvcRecord]:
    root = root.resolve()
    found = []
    for path in _record_files(root):
        document = _read(path)
        if document is not None:
            found.append(DvcRecord(path, tuple(_outs(root, path, document)), _generator(document)))
    return found


def tracked_files(root: Path) -> dict[str, TrackedFile]:
    """Every file the repository's DVC records track, keyed by repository-relative path."""
    return {out.path: out for record in records(root) for out in record.outs}


def _record_files(root: Path) -> list[Path]:
    found: list[Path] = []
    scanned = 0
    pending = [(root, 0)]
    while pending and scanned < MAX_SCANNED:
        folder, depth = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries[: MAX_SCANNED - scanned]:
            scanned += 1
            if entry.name.startswith(".") or entry.is_symlink():
                continue
            if entry.is_file() and entry.name.endswith(".dvc"):
                found.append(Path(entry.path))
            elif entry.is_dir() and depth < MAX_DEPTH:
                pending.append((Path(entry.path), depth + 1))
    return sorted(found)


def _read(path: Path) -> dict | None:
    """The record's YAML, or None when it is too large, uses aliases, nests deeply or is broken."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            return None
        text = data.decode("utf-8")
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                return None  # DVC never writes aliases; expanding them is how alias bombs work
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > MAX_NESTING:
                return None
        document = yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return document if isinstance(document, dict) else None


def _outs(root: Path, record: Path, document: dict) -> list[TrackedFile]:
    outs = document.get("outs")
    tracked = []
    for out in outs if isinstance(outs, list) else []:
        if not isinstance(out, dict) or not isinstance(out.get("path"), str):
            continue
        target = (record.parent / out["path"]).resolve()
        if not target.is_relative_to(root) or target == root:
            continue  # a record naming a file outside the repository tracks nothing here
        md5 = out.get("md5")
        md5 = md5 if isinstance(md5, str) and not md5.endswith(".dir") else None
        tracked.append(TrackedFile(target.relative_to(root).as_posix(), md5))
    return tracked


def _generator(document: dict) -> str | None:
    meta = document.get("meta")
    generator = meta.get("llmops_generator") if isinstance(meta, dict) else None
    return generator if isinstance(generator, str) else None
