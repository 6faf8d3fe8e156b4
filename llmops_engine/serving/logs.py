"""The request log: one JSON line per request, appended by the HTTP front, read by `llmops logs`.

Lives under `<state_dir>/serve/requests/<deployment>.jsonl` on the machine running the
front (the local head; on a remote cluster, its head node); requests the gateway could not
attribute to a deployment (bad JSON, unknown model, too large) go to `llmops-gateway.jsonl`.
A line holds the request id, time, deployment, model version, endpoint, status, latency and
token counts; prompt and completion texts only when the Deployment sets `log_payloads: true`.
Never keys, and never unauthenticated attempts (those are only counted in /metrics), so
anonymous clients cannot grow it. It rotates by size: the current file plus KEEP_ROTATED
older ones (`.1` newest), at most MAX_LOG_BYTES each.
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

from ..errors import LLMOpsError
from ..project import Project

MAX_LOG_BYTES = 16 * 2**20
KEEP_ROTATED = 4


def log_path(project: Project, deployment: str) -> Path:
    return project.state_dir / "serve" / "requests" / f"{deployment}.jsonl"


def rotated(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def append(path: str | Path, entry: dict[str, Any], max_bytes: int = MAX_LOG_BYTES, keep: int = KEEP_ROTATED) -> None:
    """Append one line with a single O_APPEND write, so concurrent writers never interleave;
    rotate first when the line would take the file past `max_bytes`."""
    path = Path(path)
    line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and size + len(line) > max_bytes:
            os.close(fd)
            fd = -1
            _rotate(path, keep)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, line)
    finally:
        if fd >= 0:
            os.close(fd)


def _rotate(path: Path, keep: int) -> None:
    """path.{keep-1} → path.{keep}, …, path → path.1 (the oldest falls off). Renames are
    atomic; when two writers rotate at once, the loser's renames find nothing and it goes on."""
    for index in range(keep - 1, 0, -1):
        try:
            os.replace(rotated(path, index), rotated(path, index + 1))
        except FileNotFoundError:
            pass
    try:
        if keep:
            os.replace(path, rotated(path, 1))
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def read_logs(project: Project, name: str, limit: int = 50) -> list[dict[str, Any]]:
    """The last `limit` requests of a deployment, oldest first (`llmops logs <name>`),
    read across the rotated files, newest file first, only as far back as needed."""
    path = log_path(project, name)
    files = [f for f in [path] + [rotated(path, i) for i in range(1, KEEP_ROTATED + 1)] if f.is_file()]
    if not files:
        raise LLMOpsError(f"no request log for deployment '{name}' at {path}; has it served any request yet?")
    entries: list[dict[str, Any]] = []
    for file in files:
        needed = limit - len(entries)
        if needed <= 0:
            break
        entries = _tail(file, needed) + entries
    return entries


def _tail(path: Path, limit: int) -> list[dict[str, Any]]:
    tail: deque[str] = deque(maxlen=max(limit, 0))
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                tail.append(line)
    except FileNotFoundError:
        return []  # rotated away between listing and reading
    entries = []
    for line in tail:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a torn last line from a killed writer is not an entry
    return entries
