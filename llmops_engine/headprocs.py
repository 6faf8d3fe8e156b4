"""The processes of one local Ray head: finding all of them, and stopping all of them.

`llmops down` (and the next apply, for a head that died or whose start was cut off) must stop
exactly the processes of this project's head, whatever moment a SIGKILL hit `llmops apply`,
and never another Ray instance on the machine (`ray stop` would kill them all).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ClusterError

# Names every process of a local head in its environment; the value is the head's temp root.
HEAD_MARKER_ENV = "LLMOPS_RAY_HEAD"
STOP_GRACE_S = 10
STOP_ROUNDS = 5


def head_processes(temp_root: Path) -> list:
    """The live processes of the head whose temp root this is (psutil.Process objects).
    Other Ray instances on the machine are never included.

    A process belongs to the head when it carries the head's marker in its environment or
    names the temp root on its command line, when it shares the session of a marked process
    (the head runs in a session of its own, and Ray's setproctitle wipes what
    /proc/<pid>/environ shows of workers and agents), or when it descends from either."""
    import psutil

    root = str(temp_root)
    own_session = os.getsid(0)
    marked: dict[int, psutil.Process] = {}
    sessions: set[int] = set()
    by_session: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["cmdline", "environ"], ad_value=None):
        session = _session_of(proc.pid)
        by_session.setdefault(session, []).append(proc)
        environ = proc.info.get("environ") or {}
        if environ.get(HEAD_MARKER_ENV) == root:
            marked[proc.pid] = proc
            if session not in (own_session, -1):
                sessions.add(session)
        elif any(f"{root}/" in f"{part}/" for part in proc.info.get("cmdline") or ()):
            marked[proc.pid] = proc  # heads recorded before the marker existed
    found = dict(marked)
    for session in sessions:
        found.update((proc.pid, proc) for proc in by_session.get(session, ()))
    for proc in list(found.values()):
        try:
            found.update((child.pid, child) for child in proc.children(recursive=True))
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _session_of(pid: int) -> int:
    try:
        return os.getsid(pid)
    except OSError:
        return -1


def stop_head_processes(temp_root: Path) -> int:
    """Terminate (then kill) every process of the head; `ray stop` would kill every Ray on
    the machine. Repeats until none is left: a `ray start` cut off mid-way may still be
    spawning. Returns how many processes were stopped."""
    stopped: set[int] = set()
    for _ in range(STOP_ROUNDS):
        procs = head_processes(temp_root)
        if not procs:
            return len(stopped)
        _terminate(procs)
        stopped.update(proc.pid for proc in procs)
    left = sorted(proc.pid for proc in head_processes(temp_root))
    if left:
        raise ClusterError(f"could not stop the local Ray head's processes {left}; stop them by hand")
    return len(stopped)


def _terminate(procs: list) -> None:
    import psutil

    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=STOP_GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
