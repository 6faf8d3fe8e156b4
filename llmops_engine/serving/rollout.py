"""Moving live traffic from one model version to another, safely.

Every transition has the same skeleton, whatever the strategy:
  1. load the new version into the spare slot (a user_config update: `reconfigure`);
  2. wait until Serve reports the slot HEALTHY *and* the slot itself says it holds the
     new version, then send it a smoke request directly (not through the ingress);
  3. only then give it traffic, by changing the weights in the ingress user_config;
  4. unload the old version.
Strategies differ in step 3: `rolling` switches at once, `blue-green` switches at once and
keeps the old version loaded for `drain_s`, `canary` walks `steps` and analyses live
outcomes (error rate, p95) after each; a failed analysis puts the weights back, unloads
the canary and raises RolloutFailed while the old version keeps serving.

With a `load_test` in the spec, load is put on the deployment's endpoint at every canary step
or, for `rolling` and `blue-green`, after the switch while the old version is still loaded; the
step's live outcomes are analysed meanwhile (the ingress retries a failing non-primary slot on the
primary, so only the analysis sees the new version's own errors). A missed threshold, of the
analysis or of the load test, rolls back the same way.

After a transition, the project's gateway is told the deployment's routes (`publish`) and
polled until it routes by them, so the endpoint works when apply returns.

Imports Ray (handles to read the slot's version and the ingress's outcome stats).
"""

from __future__ import annotations

import json
import math
import time
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import DeploymentError, RolloutFailed
from .config import (
    GATEWAY, GATEWAY_APP, INGRESS, AppSettings, ModelRef, Routing, app_config, gateway_config, routing_of,
)
from .rest import Dashboard

READY_TIMEOUT_S = 300
POLL_S = 0.25
ROLLING_GRACE_S = 1.0  # let requests already sent to the old version finish
SMOKE_PROMPT = "Hello"
ANALYSIS_PATIENCE = 10  # a quiet canary step may wait this many windows for min_requests


LoadTest = Callable[[], dict[str, Any]]  # runs the spec's load test: its result with a "verdict"


@dataclass(frozen=True)
class Outcome:
    routing: Routing
    previous: ModelRef | None  # the version that served before, if it changed
    steps: list[dict[str, Any]]
    load_tests: list[dict[str, Any]] = field(default_factory=list)


class Rollout:
    def __init__(self, dashboard: Dashboard, http_options: dict[str, Any], report: Callable[[str], None] = print):
        self.dashboard = dashboard
        self.http_options = http_options
        self.report = report

    # entry point ---------------------------------------------------------------
    def run(self, settings: AppSettings, target: ModelRef, rollout: dict[str, Any], load: LoadTest | None = None) -> Outcome:
        """Make `target` the live version; `load` (for a version replacing another) is the spec's load test."""
        live = self.dashboard.application(settings.name)
        routing = routing_of(live["deployed_app_config"]) if live and live.get("deployed_app_config") else Routing()
        current = routing.models.get(routing.primary)
        if current is not None and routing.weights.get(routing.primary) and current.version == target.version:
            return Outcome(self._settle(settings, routing), None, [])
        routing = self._prepare(settings, routing, target)
        if current is None or not routing.weights.get(routing.primary):
            self.report(f"  {settings.name}: first version {target.version}")
            return Outcome(self._switch(settings, routing, drain_s=0), None, [])
        strategy = rollout["strategy"]
        self.report(f"  {settings.name}: {strategy} rollout {current.version} -> {target.version}")
        if strategy == "canary":
            final, steps, loads = self._canary(settings, routing, rollout, load)
            return Outcome(final, current, steps, loads)
        drain = rollout["drain_s"] if strategy == "blue-green" else ROLLING_GRACE_S
        if load is None:
            return Outcome(self._switch(settings, routing, drain_s=drain), current, [])
        verdict, result = self._switch_under_load(settings, routing, rollout["analysis"], load)
        return Outcome(self._switch(settings, routing, drain_s=drain), current, [verdict], [result])

    def publish(self, entries: dict[str, dict[str, Any]], log_path: str) -> None:
        """Make the gateway route exactly `entries` (deployment → gateway_entry); with none
        left, remove the gateway."""
        if not entries:
            self.dashboard.delete_application(GATEWAY_APP, self.http_options)
            return
        self.dashboard.put_application(gateway_config(entries, log_path), self.http_options)
        wanted = json.dumps(entries, sort_keys=True)

        def routing(live: dict[str, Any]) -> bool:
            current = _handle(GATEWAY_APP, GATEWAY).entries.remote().result(timeout_s=30)
            return json.dumps(current, sort_keys=True) == wanted

        self._wait(routing, "the gateway to take the new routes", GATEWAY_APP, GATEWAY)

    # steps ---------------------------------------------------------------------
    def _prepare(self, settings: AppSettings, routing: Routing, target: ModelRef) -> Routing:
        """Load `target` into the spare slot and prove it ready; no traffic moves yet."""
        spare = routing.spare
        routing = routing.with_model(spare, target).with_weights({routing.primary: routing.weights[routing.primary], spare: 0})
        self._put(settings, routing)
        try:
            self._wait_slot(settings.name, spare, target.version)
            self._smoke(settings.name, spare, target)
        except Exception as exc:
            # Unload it: a version that has not proven itself must not hold memory (or a slot).
            self._put(settings, routing.with_model(spare, None))
            raise RolloutFailed(f"model version {target.version} did not become ready: {exc}; "
                                "the live version (if any) keeps serving") from exc
        return routing

    def _switch(self, settings: AppSettings, routing: Routing, drain_s: float) -> Routing:
        """All traffic to the spare slot; it becomes primary; the old one is unloaded after drain_s."""
        old, new = routing.primary, routing.spare
        routing = routing.with_weights({new: 100, old: 0}, primary=new)
        self._route(settings, routing)
        if routing.models.get(old) is not None:
            time.sleep(drain_s)
        return self._settle(settings, routing)

    def _switch_under_load(self, settings: AppSettings, routing: Routing, analysis: dict[str, Any],
                           load: LoadTest) -> tuple[dict, dict]:
        """All traffic to the new version with the old one still loaded, under the load test and the
        analysis; back to the old one (and the new one unloaded) when either fails."""
        old, new = routing.primary, routing.spare
        self._route(settings, routing.with_weights({new: 100, old: 0}))
        verdict, result = self._analysed_step(settings.name, new, analysis, load)
        verdict["step"] = 100
        self.report(f"  {settings.name}: under load: {verdict['summary']}")
        if not verdict["passed"]:
            self._abort(settings, routing)
            raise RolloutFailed(
                f"model version {routing.models[new].version} failed under load: {verdict['summary']}; "
                f"rolled back: version {routing.models[old].version} serves 100%"
            )
        return verdict, result

    def _canary(self, settings: AppSettings, routing: Routing, rollout: dict[str, Any],
                load: LoadTest | None) -> tuple[Routing, list, list]:
        old, new = routing.primary, routing.spare
        analysis, results, loads = rollout["analysis"], [], []
        for step in rollout["steps"]:
            routing = routing.with_weights({new: step, old: 100 - step})
            self._route(settings, routing)
            verdict, loaded = self._analysed_step(settings.name, new, analysis, load)
            verdict["step"] = step
            results.append(verdict)
            loads += [loaded] if loaded else []
            self.report(f"  {settings.name}: canary {step}%: {verdict['summary']}")
            if not verdict["passed"]:
                self._abort(settings, routing)
                version = routing.models[new].version
                raise RolloutFailed(
                    f"canary model version {version} failed analysis at {step}% traffic: {verdict['summary']}; "
                    f"rolled back: version {routing.models[old].version} serves 100%"
                )
        return self._switch(settings, routing, drain_s=0), results, loads

    def _analysed_step(self, app: str, slot: str, analysis: dict[str, Any],
                       load: LoadTest | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The step's analysis verdict and, with a load test, its result: the load runs while the
        window is analysed (its requests are analysed too); either failing fails the step."""
        if load is None:
            return self._analyse(app, slot, analysis), None
        results: list[dict[str, Any]] = []
        runner = threading.Thread(target=lambda: results.append(guarded_load(load)), name="llmops-load-test", daemon=True)
        runner.start()
        try:
            verdict = self._analyse(app, slot, analysis)
        finally:
            runner.join()  # the load never outlives its step (bounded by its duration)
        loaded = results[0]
        verdict["load_test"] = loaded["verdict"]["summary"]
        if not loaded["verdict"]["passed"]:
            verdict["passed"] = False
            verdict["summary"] = f"{verdict['summary']}; load test: {loaded['verdict']['summary']}"
        return verdict, loaded

    def _abort(self, settings: AppSettings, routing: Routing) -> None:
        old, new = routing.primary, routing.spare
        routing = routing.with_weights({old: 100, new: 0})
        self._route(settings, routing)
        self._put(settings, routing.with_model(new, None))

    def _settle(self, settings: AppSettings, routing: Routing) -> Routing:
        """Steady state: the primary at 100 %, the spare slot empty; settings refreshed."""
        routing = routing.with_weights({routing.primary: 100, routing.spare: 0}).with_model(routing.spare, None)
        self._put(settings, routing)
        self._wait_running(settings.name)
        self._wait_routes(settings.name, routing)
        return routing

    # Serve interactions -----------------------------------------------------------
    def _put(self, settings: AppSettings, routing: Routing) -> None:
        from .keys import hand_over

        config = app_config(settings, routing)  # refuses a provider key unset here, before anything moves
        for model in routing.models.values():
            if model is not None:
                hand_over(model)  # the keys each slot's config names by hash, to the replicas (keys.py)
        self.dashboard.put_application(config, self.http_options)

    def _route(self, settings: AppSettings, routing: Routing) -> None:
        self._put(settings, routing)
        self._wait_routes(settings.name, routing)

    def _wait_slot(self, app: str, slot: str, version: str) -> None:
        def ready(live: dict[str, Any]) -> bool:
            if ((live.get("deployments") or {}).get(slot) or {}).get("status") != "HEALTHY":
                return False
            info = _handle(app, slot).info.remote().result(timeout_s=30)
            failed = info.get("load_error") or {}
            if failed.get("version") == version:
                raise DeploymentError(f"slot {slot} could not load model version {version}: {failed['error']}")
            return info["version"] == version

        self._wait(ready, f"slot {slot} of {app} to load model version {version}", app, slot)

    def _wait_routes(self, app: str, routing: Routing) -> None:
        wanted = routing.routes_json()
        self._wait(lambda live: _handle(app, INGRESS).routes.remote().result(timeout_s=30) == wanted,
                   f"the ingress of {app} to take the new traffic weights", app, INGRESS)

    def _wait_running(self, app: str) -> None:
        self._wait(lambda live: live.get("status") == "RUNNING", f"application {app} to be RUNNING", app, None)

    def _wait(self, condition: Callable[[dict], bool], what: str, app: str, deployment: str | None) -> None:
        """Poll until condition(live application) holds; fail at once if Serve gives up on it."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            live = self.dashboard.application(app) or {}
            _fail_fast(live, app, deployment)
            try:
                if condition(live):
                    return
            except DeploymentError:
                raise
            except Exception:  # noqa: BLE001 - replicas (re)starting answer with errors for a while
                pass
            time.sleep(POLL_S)
        raise DeploymentError(f"timed out after {READY_TIMEOUT_S}s waiting for {what}")

    def _smoke(self, app: str, slot: str, target: ModelRef) -> None:
        # A provider answers chat messages only: its smoke request is one (and goes to the provider).
        item = {"instruction": SMOKE_PROMPT, "input": ""} if target.upstream else {"prompt": SMOKE_PROMPT}
        work = {"items": [item], "stops": [], "live": False,
                "params": {"max_new_tokens": 2, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0}}
        result = _handle(app, slot).generate.remote(work).result(timeout_s=120)
        if "error" in result or not result.get("gens"):
            raise DeploymentError(f"smoke request answered {result.get('error')}")

    def _analyse(self, app: str, slot: str, analysis: dict[str, Any]) -> dict[str, Any]:
        """Outcomes of the canary's live requests over at least `window_s`, extended (up to
        ANALYSIS_PATIENCE windows) until `min_requests` of them came in; then judged."""
        ingress = _handle(app, INGRESS)
        start = ingress.outcomes_since.remote(math.inf).result(timeout_s=30)["sequence"]
        began = time.monotonic()
        window, patience = analysis["window_s"], analysis["window_s"] * ANALYSIS_PATIENCE
        while True:
            time.sleep(max(POLL_S, window - (time.monotonic() - began)))
            samples = ingress.outcomes_since.remote(start).result(timeout_s=30)["slots"][slot]
            elapsed = time.monotonic() - began
            if (elapsed >= window and len(samples) >= analysis["min_requests"]) or elapsed >= patience:
                return judge(samples, analysis)


def guarded_load(load: LoadTest) -> dict[str, Any]:
    """The load test's result; a load test that could not run fails its step rather than the thread."""
    try:
        return load()
    except Exception as exc:  # noqa: BLE001 - reported as the step's verdict
        problem = f"the load test could not run: {type(exc).__name__}: {exc}"[:300]
        return {"requests": 0, "verdict": {"passed": False, "problems": [problem], "summary": problem}}


def judge(samples: list, analysis: dict[str, Any]) -> dict[str, Any]:
    """Pass/fail of one analysis window from (seq, ok, latency_ms) samples of the canary."""
    total = len(samples)
    errors = sum(1 for s in samples if not s[1])
    latencies = sorted(s[2] for s in samples if s[1])
    p95 = latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)] if latencies else None
    error_rate = errors / total if total else 0.0
    problems = []
    if total < analysis["min_requests"]:
        problems.append(f"only {total} requests in the window (min_requests {analysis['min_requests']})")
    if error_rate > analysis["max_error_rate"]:
        problems.append(f"error rate {error_rate:.3f} > {analysis['max_error_rate']} ({errors} of {total})")
    if analysis.get("max_p95_ms") and p95 is not None and p95 > analysis["max_p95_ms"]:
        problems.append(f"p95 {p95:.0f} ms > {analysis['max_p95_ms']} ms")
    summary = "; ".join(problems) or f"{total} requests, error rate {error_rate:.3f}, p95 {p95 or 0:.0f} ms"
    return {"passed": not problems, "requests": total, "errors": errors, "error_rate": error_rate,
            "p95_ms": p95, "summary": summary}


def _fail_fast(live: dict[str, Any], app: str, deployment: str | None) -> None:
    if live.get("status") == "DEPLOY_FAILED":
        raise DeploymentError(f"Serve could not deploy {app}: {_last_lines(live.get('message', ''))}")
    info = (live.get("deployments") or {}).get(deployment or "", {})
    if info.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
        raise DeploymentError(f"{app}/{deployment} is {info['status']}: {_last_lines(info.get('message', ''))}")


def _handle(app: str, deployment: str):
    import logging

    from ray import serve

    # Importing Serve sets its driver-side logger to INFO; apply reports progress itself.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    return serve.get_deployment_handle(deployment, app_name=app)


def _last_lines(text: str, n: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-n:])

