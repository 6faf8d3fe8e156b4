"""The load: `clients` virtual users sending streamed chat completions to one target, back to back.

`llmops loadtest` and a rollout's load-test step call `run_load`, which blocks, runs its own
event loop in its own thread (so it works from any caller, inside a loop or not), and returns
plain numbers. Every dimension is bounded, because the other end may be slow, broken or hostile:
time (no request starts after `duration_s`; those in flight get a short grace, then are cancelled
and counted as `interrupted`; each request has its own timeout), count (`max_requests`, at most
MAX_REQUESTS, which also caps the samples kept), memory (one float per request and per first
token; nothing of the answers is kept), response size (bounded SSE lines and bodies; compressed
bodies are refused), no redirects, and `clients` connections (one per virtual user).

The generator has to be cheap, or on a 2-core machine it would measure itself: bodies are
serialized once, each virtual user has its own one-connection pool, and after a stream's first
token only events that carry `usage` or an `error` are parsed as JSON. bench/loadgen_bench.py
measures its CPU per request against plain clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import httpx

from ..errors import LoadTestError
from .target import Target

MAX_CLIENTS = 256
MAX_DURATION_S = 600.0
MAX_REQUESTS = 100_000  # the default and largest count bound; also bounds the samples kept
DRAIN_GRACE_S = 5.0  # how long requests in flight at the deadline may still finish
REQUEST_TIMEOUT_CAP_S = 60.0
THREAD_SLACK_S = 10.0  # run_load's backstop beyond deadline + grace (cancellation, pool shutdown)
MAX_LINE_BYTES = 1024 * 1024  # one SSE line
MAX_STREAM_BYTES = 8 * 1024 * 1024  # one streamed answer
MAX_ERROR_BODY_BYTES = 64 * 1024  # read to keep the connection; beyond this it is dropped
MAX_MESSAGE_SETS = 256  # distinct request bodies kept (the pool is cycled)
DEFAULT_MESSAGES = [[{"role": "user", "content": "Hello! What can you help me with?"}]]

OK = "200"


@dataclass(frozen=True)
class LoadPlan:
    """What run_load was asked for, checked."""

    clients: int
    duration_s: float
    max_requests: int
    max_tokens: int
    request_timeout_s: float

    @property
    def grace_s(self) -> float:
        return min(DRAIN_GRACE_S, self.request_timeout_s)


@dataclass(frozen=True)
class Outcome:
    """One request: its status_counts key ("200" for a complete stream), seconds to the end of
    the stream and to the first content token, and the completion tokens its usage reported."""

    key: str
    latency_s: float
    ttft_s: float | None = None
    tokens: int | None = None


def run_load(target: Target, clients: int, duration_s: float, *, max_requests: int | None = None,
             max_tokens: int = 32, messages: list[list[dict]] | None = None,
             request_timeout_s: float | None = None) -> dict[str, Any]:
    """Load `target` and return the result (see `_result`). Blocks for about `duration_s`
    (at most duration + grace + THREAD_SLACK_S). `messages` is a pool of chat message lists,
    used in turn; `request_timeout_s` defaults to the duration, capped at 60 s."""
    plan = _plan(clients, duration_s, max_requests, max_tokens, request_timeout_s)
    _check_url(target.base_url)
    bodies = _bodies(target, plan, messages or DEFAULT_MESSAGES)
    outcome: dict[str, Any] = {}

    def load() -> None:
        try:
            outcome["result"] = asyncio.run(_load(target, plan, bodies))
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which raises it
            outcome["error"] = exc

    thread = threading.Thread(target=load, name="llmops-loadtest", daemon=True)
    thread.start()
    thread.join(plan.duration_s + plan.grace_s + THREAD_SLACK_S)
    if thread.is_alive():
        raise LoadTestError(f"the load test did not stop within {plan.duration_s + plan.grace_s + THREAD_SLACK_S:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _plan(clients: int, duration_s: float, max_requests: int | None, max_tokens: int,
          request_timeout_s: float | None) -> LoadPlan:
    problems = []
    if not isinstance(clients, int) or not 1 <= clients <= MAX_CLIENTS:
        problems.append(f"clients must be 1..{MAX_CLIENTS}")
    if not 0 < duration_s <= MAX_DURATION_S:
        problems.append(f"duration must be in (0, {MAX_DURATION_S:g}] s")
    if max_requests is not None and not 1 <= max_requests <= MAX_REQUESTS:
        problems.append(f"max_requests must be 1..{MAX_REQUESTS}")
    if max_tokens < 1:
        problems.append("max_tokens must be at least 1")
    if request_timeout_s is not None and not 0 < request_timeout_s <= REQUEST_TIMEOUT_CAP_S:
        problems.append(f"the request timeout must be in (0, {REQUEST_TIMEOUT_CAP_S:g}] s")
    if problems:
        raise LoadTestError("cannot run the load test: " + "; ".join(problems))
    timeout = request_timeout_s or min(REQUEST_TIMEOUT_CAP_S, duration_s)
    return LoadPlan(clients, float(duration_s), max_requests or MAX_REQUESTS, max_tokens, timeout)


def _check_url(base_url: str) -> None:
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise LoadTestError(f"cannot run the load test: the target URL is not valid ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise LoadTestError("cannot run the load test: the target URL must be http(s)://host:port/…")


def _bodies(target: Target, plan: LoadPlan, messages: list[list[dict]]) -> list[bytes]:
    """Each request body serialized once; streamed, with usage in the last chunk (tokens/s)."""
    return [json.dumps({"model": target.model, "messages": chat, "max_tokens": plan.max_tokens, "stream": True,
                        "stream_options": {"include_usage": True}}).encode()
            for chat in messages[:MAX_MESSAGE_SETS]]


# the load ----------------------------------------------------------------------------------------


class _Tally:
    """What the virtual users share (one event loop, so no locks): the request count bound, and
    only numbers about each request."""

    def __init__(self, limit: int, deadline: float):
        self.limit = limit
        self.deadline = deadline
        self.started = 0
        self.interrupted = 0
        self.latencies = array("d")
        self.ttfts = array("d")
        self.counts: Counter[str] = Counter()
        self.tokens = 0
        self.without_usage = 0
        self.last_done = 0.0

    def take(self) -> int | None:
        """A ticket for one more request, or None when the time or count bound is reached."""
        if self.started >= self.limit or perf_counter() >= self.deadline:
            return None
        self.started += 1
        return self.started - 1

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.key] += 1
        self.last_done = perf_counter()
        if outcome.key != OK:
            return
        self.latencies.append(outcome.latency_s)
        if outcome.ttft_s is not None:
            self.ttfts.append(outcome.ttft_s)
        if outcome.tokens is None:
            self.without_usage += 1
        else:
            self.tokens += outcome.tokens


async def _load(target: Target, plan: LoadPlan, bodies: list[bytes]) -> dict[str, Any]:
    url = target.base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               # identity: a compressed stream could expand far beyond the bytes counted on the wire
               "Accept-Encoding": "identity"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    async with contextlib.AsyncExitStack() as stack:
        tls = httpx.create_ssl_context()  # built once: each client would load the CA bundle again (~20 ms CPU)
        pools = [await stack.enter_async_context(_connection(plan, tls)) for _ in range(plan.clients)]
        started_at, start = time.time(), perf_counter()
        tally = _Tally(plan.max_requests, start + plan.duration_s)
        users = [asyncio.create_task(_virtual_user(http, url, headers, bodies, tally, plan.request_timeout_s))
                 for http in pools]
        _, late = await asyncio.wait(users, timeout=max(0.0, tally.deadline + plan.grace_s - perf_counter()))
        for user in late:
            user.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for user in users:
            if not user.cancelled() and user.exception() is not None:
                raise user.exception()
        end = max(tally.last_done, min(perf_counter(), tally.deadline))
    stopped_by = "max_requests" if tally.started >= plan.max_requests and not late else "duration"
    return _result(tally, plan, started_at, end - start, stopped_by)


def _connection(plan: LoadPlan, tls) -> httpx.AsyncClient:
    """A virtual user's own keep-alive connection. One pool per user, not one pool of `clients`
    connections: httpcore scans its whole pool on every request, which at 16 connections doubled
    the generator's CPU per request (bench/loadgen_bench.py)."""
    # trust_env=False: a proxy from the environment must not carry the load (or the key) elsewhere
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                             timeout=httpx.Timeout(plan.request_timeout_s), verify=tls, follow_redirects=False,
                             trust_env=False)


async def _virtual_user(http: httpx.AsyncClient, url: str, headers: dict[str, str], bodies: list[bytes],
                        tally: _Tally, timeout_s: float) -> None:
    while (ticket := tally.take()) is not None:
        try:
            outcome = await _one_request(http, url, bodies[ticket % len(bodies)], headers, timeout_s)
        except asyncio.CancelledError:
            tally.interrupted += 1  # still running when the grace ran out: neither a success nor an error
            raise
        tally.add(outcome)


async def _one_request(http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str],
                       timeout_s: float) -> Outcome:
    """One streamed request; every failure becomes an Outcome keyed by what went wrong."""
    started = perf_counter()
    streaming = False
    try:
        async with asyncio.timeout(timeout_s):
            async with http.stream("POST", url, content=body, headers=headers) as response:
                if response.status_code != 200:
                    await _drain(response, MAX_ERROR_BODY_BYTES)
                    return Outcome(str(response.status_code), perf_counter() - started)
                streaming = True
                return await _read_stream(response, started)
    except (TimeoutError, httpx.TimeoutException):
        return Outcome("timeout", perf_counter() - started)
    except httpx.ConnectError:
        return Outcome("connect_error", perf_counter() - started)
    except (httpx.HTTPError, httpx.StreamError):
        return Outcome("broken_stream" if streaming else "connection_error", perf_counter() - started)


async def _read_stream(response: httpx.Response, started: float) -> Outcome:
    """Read an SSE answer to `data: [DONE]`: the first content token's time, usage's tokens.
    Holds at most one line (≤ MAX_LINE_BYTES) plus one network chunk."""
    headers = response.headers
    if not headers.get("content-type", "").startswith("text/event-stream") or \
            headers.get("content-encoding", "identity") != "identity":
        return Outcome("bad_response", perf_counter() - started)
    pending = bytearray()
    received = 0
    ttft: float | None = None
    tokens: int | None = None
    chunks = response.aiter_raw()
    async for chunk in chunks:
        received += len(chunk)
        if received > MAX_STREAM_BYTES:
            return Outcome("too_large", perf_counter() - started)
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            line, start = pending[start:end], end + 1
            if not line.startswith(b"data:"):
                continue
            data = bytes(line[5:]).strip()
            if data == b"[DONE]":
                latency = perf_counter() - started
                # the rest (the chunked body's end) is read, so that the connection goes back to the pool
                if not await _drain_rest(chunks, MAX_STREAM_BYTES - received):
                    return Outcome("too_large", latency)
                return Outcome(OK, latency, ttft, tokens)
            # after the first token, only usage and error events are worth the JSON parse
            if ttft is None or b'"usage"' in data or b'"error"' in data:
                event = _json_object(data)
                if event is None:
                    return Outcome("bad_response", perf_counter() - started)
                if "error" in event and "choices" not in event:
                    return Outcome("stream_error", perf_counter() - started)
                if ttft is None and _has_content(event):
                    ttft = perf_counter() - started
                tokens = _completion_tokens(event, tokens)
        del pending[:start]
        if len(pending) > MAX_LINE_BYTES:
            return Outcome("too_large", perf_counter() - started)
    return Outcome("broken_stream", perf_counter() - started)  # ended without [DONE]


async def _drain(response: httpx.Response, limit: int) -> None:
    """Read an error body up to `limit` bytes (it keeps the connection); a longer one is dropped
    with its connection."""
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received > limit:
            return


async def _drain_rest(chunks, limit: int) -> bool:
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            return False
    return True


def _json_object(data: bytes) -> dict | None:
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def _has_content(event: dict) -> bool:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    delta = choices[0].get("delta")
    return isinstance(delta, dict) and isinstance(delta.get("content"), str) and bool(delta["content"])


def _completion_tokens(event: dict, tokens: int | None) -> int | None:
    usage = event.get("usage")
    count = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else tokens


# the result --------------------------------------------------------------------------------------


def _result(tally: _Tally, plan: LoadPlan, started_at: float, elapsed_s: float, stopped_by: str) -> dict[str, Any]:
    """The JSON a load test reports (and the record keeps): counts, rates and percentiles, no text."""
    requests = sum(tally.counts.values())
    ok = tally.counts.get(OK, 0)
    elapsed_s = max(elapsed_s, 1e-9)
    latencies, ttfts = sorted(tally.latencies), sorted(tally.ttfts)
    return {
        "clients": plan.clients,
        "duration_s": plan.duration_s,
        "elapsed_s": round(elapsed_s, 3),
        "requests": requests,
        "ok": ok,
        "errors": requests - ok,
        "error_rate": round((requests - ok) / requests, 6) if requests else 0.0,
        "rps": round(ok / elapsed_s, 3),  # successful requests per second: errors do not count as throughput
        "tokens_per_s": round(tally.tokens / elapsed_s, 3),
        "completion_tokens": tally.tokens,
        "without_usage": tally.without_usage,
        "latency_ms": {**_percentiles(latencies), "max": _ms(latencies[-1]) if latencies else None},
        "ttft_ms": _percentiles(ttfts),
        "status_counts": dict(sorted(tally.counts.items())),
        "interrupted": tally.interrupted,
        "started_at": started_at,
        "stopped_by": stopped_by,
    }


def _percentiles(ordered: list[float]) -> dict[str, float | None]:
    """Nearest-rank percentiles in ms (each one an observed value), None without samples."""
    def rank(p: float) -> float | None:
        return _ms(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]) if ordered else None

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99)}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
