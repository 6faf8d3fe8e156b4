"""The local journal: one row per apply and per step, in SQLite under the state dir.

Intent is written before a step runs and the outcome after, so a killed apply leaves
rows that say exactly which step was in flight. The journal is history, not truth:
resource records in the artifact store decide what is done.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS applies (
    id TEXT PRIMARY KEY, started REAL, finished REAL, status TEXT,
    host TEXT, pid INTEGER, command TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    apply_id TEXT, key TEXT, action TEXT, fingerprint TEXT, status TEXT,
    started REAL, finished REAL, message TEXT, outputs TEXT,
    PRIMARY KEY (apply_id, key)
);
"""


@dataclass(frozen=True)
class StepRow:
    apply_id: str
    key: str
    action: str
    fingerprint: str
    status: str
    started: float
    finished: float | None
    message: str


class Journal:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with closing(self._connect()) as db:  # `with db:` alone would leave it open
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def begin_apply(self, apply_id: str, command: str) -> None:
        with closing(self._connect()) as db:
            db.execute(
                "INSERT INTO applies VALUES (?, ?, NULL, 'running', ?, ?, ?)",
                (apply_id, time.time(), socket.gethostname(), os.getpid(), command),
            )

    def finish_apply(self, apply_id: str, status: str) -> None:
        with closing(self._connect()) as db:
            db.execute("UPDATE applies SET finished=?, status=? WHERE id=?", (time.time(), status, apply_id))

    def interrupted_steps(self) -> list[StepRow]:
        """Steps whose apply never recorded an outcome (the process died)."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT apply_id, key, action, fingerprint, status, started, finished, message "
                "FROM steps WHERE status='started' ORDER BY started"
            ).fetchall()
        return [StepRow(*row) for row in rows]

    def close_interrupted(self, current_apply: str) -> None:
        with closing(self._connect()) as db:
            db.execute(
                "UPDATE steps SET status='interrupted', finished=? WHERE status='started' AND apply_id != ?",
                (time.time(), current_apply),
            )
            db.execute(
                "UPDATE applies SET status='interrupted' WHERE status='running' AND id != ?", (current_apply,)
            )

    def step_started(self, apply_id: str, key: str, action: str, fingerprint: str) -> None:
        with closing(self._connect()) as db:
            db.execute(
                "INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?, 'started', ?, NULL, '', NULL)",
                (apply_id, key, action, fingerprint, time.time()),
            )

    def step_finished(self, apply_id: str, key: str, status: str, message: str = "", outputs=None) -> None:
        with closing(self._connect()) as db:
            db.execute(
                "UPDATE steps SET status=?, finished=?, message=?, outputs=? WHERE apply_id=? AND key=?",
                (status, time.time(), message, json.dumps(outputs) if outputs is not None else None, apply_id, key),
            )

    def history(self, key: str | None = None, limit: int = 50) -> list[StepRow]:
        query = "SELECT apply_id, key, action, fingerprint, status, started, finished, message FROM steps"
        args: tuple = ()
        if key:
            query += " WHERE key=?"
            args = (key,)
        query += " ORDER BY started DESC LIMIT ?"
        with closing(self._connect()) as db:
            rows = db.execute(query, args + (limit,)).fetchall()
        return [StepRow(*row) for row in rows]
