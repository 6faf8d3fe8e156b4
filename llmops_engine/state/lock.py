"""The apply lock: a lease record in the store's locks/ folder, so a terminal and CI
sharing one store exclude each other — on a shared disk or on an object store.

Only one primitive is needed from storage: create-if-absent (a hard link on a local disk,
a conditional write on an object store). The lease names its holder (host, pid, start,
command) and expires unless renewed, so a holder that died on another machine is detected
by its TTL, and one on this machine by its pid. Taking over a stale lease goes through a
create-if-absent "takeover" marker named after that lease, so two contenders cannot both
take it.
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
from typing import Protocol

from ..errors import LockError


class LeaseFiles(Protocol):
    """The four operations the apply lease needs from a store's locks/ folder."""

    def create(self, name: str, data: bytes) -> bool:
        """Write `name` only if it does not exist (atomically); False if it did."""

    def read(self, name: str) -> bytes | None: ...

    def replace(self, name: str, data: bytes) -> None: ...

    def delete(self, name: str) -> None: ...


LEASE = "apply.json"


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

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()


class ApplyLock:
    def __init__(self, files: LeaseFiles, ttl_s: float = 120.0, where: str = ""):
        self.files = files
        self.ttl_s = ttl_s
        self.where = where
        self.lease: Lease | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def holder(self) -> Lease | None:
        return _parse(self.files.read(LEASE))

    def acquire(self, timeout_s: float = 0.0, command: str | None = None) -> Lease:
        deadline = time.monotonic() + timeout_s
        command = command or " ".join(["llmops", *sys.argv[1:]])
        while True:
            lease = self._try_acquire(command)
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
        now = time.time()
        lease = Lease(uuid.uuid4().hex[:12], socket.gethostname(), os.getpid(), now, now + self.ttl_s, command)
        if self.files.create(LEASE, lease.encode()):
            return lease
        stale = self.files.read(LEASE)
        if stale is None:  # released between the two calls: one more try
            return lease if self.files.create(LEASE, lease.encode()) else None
        current = _parse(stale)
        if current is not None and _alive(current):
            return None
        # Dead, expired, or unreadable (torn by a crash): take it over.
        return lease if self._take_over(current.id if current else "unreadable", stale, lease) else None

    def _take_over(self, stale_id: str, stale: bytes, lease: Lease) -> bool:
        marker = f"takeover-{stale_id}.json"
        if not self.files.create(marker, lease.encode()):
            taker = _parse(self.files.read(marker))
            if taker is None or taker.expires < time.time():
                self.files.delete(marker)  # its taker died mid-takeover; retry on the next try
            return False
        try:
            if self.files.read(LEASE) != stale:
                return False  # someone else took it over meanwhile
            self.files.delete(LEASE)
            return self.files.create(LEASE, lease.encode())
        finally:
            self.files.delete(marker)

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="llmops-lock-renew", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            current = self.holder()
            if current is None or self.lease is None or current.id != self.lease.id:
                return  # force-unlocked under us
            current.expires = time.time() + self.ttl_s
            try:
                self.files.replace(LEASE, current.encode())
            except Exception:  # noqa: BLE001 - a missed renewal only shortens the lease; retry next tick
                continue

    def release(self) -> None:
        self._stop.set()
        if self._renewer:
            self._renewer.join(timeout=5)
        if self.lease is None:
            return
        current = self.holder()
        if current is not None and current.id == self.lease.id:
            self.files.delete(LEASE)
        self.lease = None

    def force_unlock(self, lease_id: str) -> Lease:
        current = self.holder()
        if current is None:
            raise LockError(f"no lock is held{f' in {self.where}' if self.where else ''}")
        if current.id != lease_id:
            raise LockError(f"lock id mismatch: the held lock is {current.id}, not {lease_id}")
        self.files.delete(LEASE)
        return current

    def __enter__(self) -> "ApplyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _parse(data: bytes | None) -> Lease | None:
    if data is None:
        return None
    try:
        return Lease(**json.loads(data))
    except (ValueError, TypeError):
        return None


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
