"""Read DVC's `*.dvc` records without DVC: which files they track and with which md5.

Planning must be read-only, so a DVC-tracked file that a fresh clone lacks is not restored
while planning; its identity comes from the md5 its record holds. The loader uses the same
list to accept a `source.path` that matches no file yet but is DVC-tracked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class TrackedFile:
    path: str          # repository-relative, POSIX
    md5: str | None    # None for a tracked directory (md5 ends in ".dir") or a record without one
    record: str        # the .dvc file that tracks it, repository-relative


def tracked_files(root: Path) -> dict[str, TrackedFile]:
    """Every output named by a root-level `*.dvc` record, keyed by repository-relative path."""
    root = root.resolve()
    tracked: dict[str, TrackedFile] = {}
    for record in sorted(p for p in root.glob("*.dvc") if p.is_file() and not p.is_symlink()):
        for out in _outs(record):
            target = (record.parent / str(out.get("path", ""))).resolve()
            if not target.is_relative_to(root) or target == root:
                continue
            md5 = out.get("md5")
            md5 = md5 if isinstance(md5, str) and not md5.endswith(".dir") else None
            rel = target.relative_to(root).as_posix()
            tracked[rel] = TrackedFile(rel, md5, record.name)
    return tracked


def _outs(record: Path) -> list[dict]:
    try:
        document = yaml.safe_load(record.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, RecursionError, yaml.YAMLError):  # a broken record tracks nothing
        return []
    outs = document.get("outs") if isinstance(document, dict) else None
    return [o for o in outs if isinstance(o, dict)] if isinstance(outs, list) else []
