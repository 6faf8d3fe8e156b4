"""Long steps as detached Ray actors, so that they outlive the `llmops apply` that started them.

A step's driver (Ray Train's `trainer.fit()`, the evaluation task's `ray.get`) used to run inside
the apply process: a CI runner whose job ended (time limit, cancellation, a lost machine) killed a
six-hour training with it. Each such driver now runs in a *detached* actor named after the step's
fingerprint (and the store it writes to), which lives on the cluster until its result has been
collected. An apply that starts a step waits on its actor; an apply that finds one already running
(the previous apply was killed, or another machine sharing the store started it) waits on the same
actor instead of starting a second. Should the actor itself die (its node was lost), the next
apply starts it again; the step resumes from what it left in the store (training: the last
checkpoint; evaluation: the answers already written). Ctrl-C leaves a step on a cluster running,
but stops one on the engine's own local head, where nobody else would collect it.

The actor holds no resources of its own (num_cpus=0): the work it drives asks for them, and a
finished step whose result waits for collection blocks nothing. It is threaded: one thread runs
the step, while `events` and `outcome` calls from appliers block on a condition (a long poll, so
waiting costs no CPU on either side).

Ray is imported inside functions; the step's own module is imported in the actor's process only.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
import time
import uuid
from typing import Any, Callable

from .errors import LLMOpsError

NAMESPACE = "llmops"
# A finished step whose result nobody collects (its spec changed before the next apply) ends after
# this long; what it wrote to the store stays, so a later apply of it still finishes at once.
UNCOLLECTED_TTL_S = 3600.0
# The applier long-polls for progress: no busy polling on either side (on a small machine, polling
# every half second took ~6 % of a core beside the training workers).
PROGRESS_WAIT_S = 2.0

class DetachedStep:
    """Runs `target(*args, emit=...)` ("module:function") in a thread; created detached by `run_detached`."""

    def __init__(self, target: str, args: tuple, token: str) -> None:
        self.token = token  # who started it: an applier that finds another token attached to a running step
        self._changed = threading.Condition()
        self._events: list[dict] = []
        self._outcome: dict | None = None
        self.started_at = time.time()
        threading.Thread(target=self._run, args=(target, args), daemon=True).start()

    # called by appliers ------------------------------------------------------
    def info(self) -> dict:
        return {"token": self.token, "started_at": self.started_at, "events": len(self._events)}

    def events(self, since: int, wait_s: float) -> tuple[list[dict], bool]:
        """The events after the first `since` (waiting up to `wait_s` for one), and whether the step is over."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._events) > since or self._outcome is not None, timeout=wait_s)
            return self._events[since:], self._outcome is not None

    def outcome(self, wait_s: float) -> dict | None:
        """{"value": what the target returned} or {"error": text}; None while the step goes on."""
        with self._changed:
            self._changed.wait_for(lambda: self._outcome is not None, timeout=wait_s)
            return self._outcome

    # the step ------------------------------------------------------------------
    def _run(self, target: str, args: tuple) -> None:
        module, _, function = target.partition(":")
        try:
            outcome = {"value": getattr(importlib.import_module(module), function)(*args, emit=self._emit)}
        except BaseException as exc:  # noqa: BLE001 - whatever it was, the applier must hear of it
            outcome = {"error": describe_error(exc)}
        with self._changed:
            self._outcome = outcome
            self._changed.notify_all()
        time.sleep(UNCOLLECTED_TTL_S)
        os._exit(0)

    def _emit(self, event: dict) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()


def describe_error(exc: BaseException) -> str:
    """One short text for the applier: a Ray task's own exception rather than Ray's wrapper."""
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        exc = exc.cause
    text = str(exc) if isinstance(exc, LLMOpsError) else f"{type(exc).__name__}: {exc}"
    # One paragraph: Ray's worker-group errors run to dozens of lines (worker reprs, log paths), and
    # the next plan repeats the text as the step's "last apply failed" reason.
    return " ".join(text.split())[:600]


def step_actor_name(name: str, store: str) -> str:
    """One step per (fingerprint name, store): two projects with one fingerprint but two stores run twice."""
    return f"{name}-{hashlib.sha256(store.encode()).hexdigest()[:8]}"


def run_detached(name: str, store: str, target: str, args: tuple, *, report: Callable[[str], None],
                 error: type[LLMOpsError], before_start: Callable[[], None] = lambda: None,
                 describe: Callable[[dict], str | None] = lambda event: None, what: str = "step",
                 outlive_interrupt: bool = True) -> Any:
    """Attach to the step `name` (started by an earlier apply) or start it (after `before_start`,
    e.g. a check that the cluster can fit it: a running step already holds what it needs); relay its
    progress through `describe` until it ends; its value. A failure or a lost actor raises `error`.
    On Ctrl-C the step goes on when `outlive_interrupt` (a cluster), else it is stopped (a laptop's
    own head, where nobody else would collect it)."""
    actor_name = step_actor_name(name, store)
    token = uuid.uuid4().hex
    run = _running(actor_name)
    if run is None:
        before_start()
        run = _start(actor_name, target, args, token)
    info = _ask(run.info.remote(), name, error, what)
    since = 0
    if info["token"] != token:
        report(f"  attached to {what} {name}, running on the cluster for {time.time() - info['started_at']:.0f}s "
               "(started by an earlier apply)")
        since = max(0, info["events"] - 1)  # where it stands, not its whole history again
    try:
        outcome = _follow(run, name, report, describe, error, what, since)
    except KeyboardInterrupt:
        if outlive_interrupt:
            report(f"  {what} {name} goes on on the cluster; the next apply attaches to it")
        else:
            _end(run, actor_name)
            report(f"  stopped {what} {name}")
        raise
    _end(run, actor_name)  # collected (or failed: the next apply starts it afresh)
    if "error" in outcome:
        raise error(f"{what} {name} failed: {outcome['error']}. The next apply starts it again, resuming from "
                    "what it left in the artifact store.")
    return outcome["value"]


def _running(actor_name: str):
    import ray

    try:
        return ray.get_actor(actor_name, namespace=NAMESPACE)
    except ValueError:
        return None


def _start(actor_name: str, target: str, args: tuple, token: str):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return ray.remote(DetachedStep).options(
        # get_if_exists: should another applier have started it since `_running` looked, this is that one.
        name=actor_name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        num_cpus=0, max_concurrency=8, max_restarts=0,
        # Beside this applier (on a cluster: the node it reached, normally the head), not on a
        # worker node that may be lost; elsewhere if that node cannot take it.
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True),
    ).remote(target, args, token)


def _end(run, actor_name: str) -> None:
    """Kill the step's actor and wait until its name is free: a step started right after under the
    same name must not attach to the dying one."""
    import ray

    ray.kill(run)
    deadline = time.monotonic() + NAME_RELEASE_S
    while time.monotonic() < deadline and _running(actor_name) is not None:
        time.sleep(0.1)


NAME_RELEASE_S = 30.0


def _follow(run, name: str, report, describe, error, what: str, seen: int) -> dict:
    while True:
        events, done = _ask(run.events.remote(seen, PROGRESS_WAIT_S), name, error, what)
        for event in events:
            if line := describe(event):
                report(line)
        seen += len(events)
        if done and not events:
            return _ask(run.outcome.remote(0), name, error, what)


def _ask(call, name: str, error: type[LLMOpsError], what: str):
    import ray

    try:
        return ray.get(call)
    except ray.exceptions.RayActorError as exc:
        raise error(f"{what} {name} was lost: its driver actor died ({_first_line(exc)}), e.g. its node left the "
                    "cluster. The next apply starts it again and resumes from what it left in the artifact store.") from exc
    except ray.exceptions.RayError as exc:
        raise error(f"{what} {name}: the cluster did not answer ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
