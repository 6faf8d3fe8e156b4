"""The apply lock: a lease record beside the artifacts, so a terminal and CI sharing one
store exclude each other.

`filelock` guards the short read-modify-write of the lease; the lease itself names its
holder (host, pid, start, command) and expires unless renewed, so a holder that died
on another machine is detected by its TTL, and one on this machine by its pid.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import LockError
from .artifacts import atomic_write


@dataclass
class Lease:
    id: str
    host: str
    pid: int
    started: float
    expires: float
    command: str

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"lock {self.id} held by pid {self.pid} on {self.host} since {started}: {self.command}"


class ApplyLock:
    def __init__(self, directory: Path, ttl_s: float = 120.0):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "apply.json"
        self.guard = FileLock(str(directory / "apply.json.lock"))
        self.ttl_s = ttl_s
        self.lease: Lease | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def holder(self) -> Lease | None:
        try:
            return Lease(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def acquire(self, timeout_s: float = 0.0, command: str | None = None) -> Lease:
        deadline = time.monotonic() + timeout_s
        while True:
            lease = self._try_acquire(command or " ".join(["llmops", *sys.argv[1:]]))
            if lease is not None:
                self.lease = lease
                self._start_renewing()
                return lease
            if time.monotonic() >= deadline:
                holder = self.holder()
                detail = holder.describe() if holder else "lock is held"
                raise LockError(
                    f"another apply is running ({detail}); wait for it, retry with --lock-timeout SECONDS, "
                    f"or if it is gone run: llmops force-unlock {holder.id if holder else '<ID>'}"
                )
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def _try_acquire(self, command: str) -> Lease | None:
        try:
            with self.guard.acquire(timeout=10):
                current = self.holder()
                if current is not None and _alive(current):
                    return None
                now = time.time()
                lease = Lease(uuid.uuid4().hex[:12], socket.gethostname(), os.getpid(), now, now + self.ttl_s, command)
                atomic_write(self.path, json.dumps(asdict(lease)))
                return lease
        except Timeout as exc:
            raise LockError(f"could not open the lock file {self.guard.lock_file}") from exc

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="llmops-lock-renew", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with self.guard:
                current = self.holder()
                if current is None or self.lease is None or current.id != self.lease.id:
                    return  # force-unlocked under us; the next write will notice
                current.expires = time.time() + self.ttl_s
                atomic_write(self.path, json.dumps(asdict(current)))

    def release(self) -> None:
        self._stop.set()
        if self._renewer:
            self._renewer.join(timeout=5)
        if self.lease is None:
            return
        with self.guard:
            current = self.holder()
            if current is not None and current.id == self.lease.id:
                self.path.unlink(missing_ok=True)
        self.lease = None

    def force_unlock(self, lease_id: str) -> Lease:
        with self.guard:
            current = self.holder()
            if current is None:
                raise LockError("no lock is held")
            if current.id != lease_id:
                raise LockError(f"lock id mismatch: the held lock is {current.id}, not {lease_id}")
            self.path.unlink(missing_ok=True)
            return current

    def __enter__(self) -> "ApplyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(lease: Lease) -> bool:
    if lease.host == socket.gethostname():
        try:
            os.kill(lease.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return lease.expires > time.time()
