"""The request log: one JSON line per request, appended by the ingress, read by `llmops logs`.

Lives under `<state_dir>/serve/requests/<deployment>.jsonl` on the machine running the
ingress (the local head; on a remote cluster, its head node). A line holds the request
id, time, deployment, model version, endpoint, status, latency and token counts; prompt
and completion texts only when the Deployment sets `log_payloads: true`. Never keys.
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

from ..errors import LLMOpsError
from ..project import Project


def log_path(project: Project, deployment: str) -> Path:
    return project.state_dir / "serve" / "requests" / f"{deployment}.jsonl"


def append(path: str | Path, entry: dict[str, Any]) -> None:
    """Append one line with a single O_APPEND write, so concurrent writers never interleave."""
    line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_logs(project: Project, name: str, limit: int = 50) -> list[dict[str, Any]]:
    """The last `limit` requests of a deployment, oldest first (`llmops logs <name>`)."""
    path = log_path(project, name)
    if not path.is_file():
        raise LLMOpsError(f"no request log for deployment '{name}' at {path}; has it served any request yet?")
    tail: deque[str] = deque(maxlen=max(limit, 0))
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            tail.append(line)
    entries = []
    for line in tail:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a torn last line from a killed writer is not an entry
    return entries
