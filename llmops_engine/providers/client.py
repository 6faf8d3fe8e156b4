"""The HTTP client for a hosted OpenAI-compatible model.

Serve replicas (prompt-only deployments), evaluation tasks and `plan` (deprecation checks)
call providers through this module only, so that every call gets the same policy: retries
with backoff on 429/5xx/timeouts honouring Retry-After, a client-side rate limit, a per-attempt
timeout, bounded reads (a provider cannot make us hold an unbounded body or line), and one
translation boundary where every httpx failure becomes a `ProviderError` whose message names
the provider and its host:port but never the API key, a request body or a full URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import json
import math
import os
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, NamedTuple

import httpx

from ..errors import ProviderError

MAX_BODY_BYTES = 8 * 1024 * 1024  # a non-stream answer; chat completions are far smaller
MAX_LINE_BYTES = 1024 * 1024  # one SSE line (and one SSE event)
MAX_ERROR_BODY_BYTES = 64 * 1024  # enough for any error envelope; the rest is never read
MAX_MESSAGE_CHARS = 500
MAX_UPSTREAM_TEXT_CHARS = 300
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
JITTER_FRACTION = 0.25
RETRY_AFTER_CAP_S = 60.0
RETRY_AFTER_STATUSES = frozenset({429, 503})  # the statuses whose Retry-After is defined (RFC 6585, RFC 9110)
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
LIST_MODELS_GRACE_S = 0.5  # list_models_now's backstop beyond its own timeout (thread hand-over)


@dataclass(frozen=True)
class Upstream:
    """One provider model as callers use it; JSON-serializable (it travels to Serve replicas and eval tasks)."""

    provider: str  # the Provider resource's name
    alias: str  # the alias in its `models`
    base_url: str  # e.g. http://127.0.0.1:8000/v1 (no trailing slash)
    model: str  # pinned upstream model id sent as "model"
    api_key_env: str | None = None
    timeout_s: float = 30.0  # per attempt (connect + whole response / time between stream chunks)
    max_retries: int = 2
    requests_per_minute: int | None = None  # client-side rate limit (token bucket, per client instance)

    @property
    def label(self) -> str:
        return f"provider:{self.provider}/{self.alias}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Upstream:
        return cls(**data)


def api_key(upstream: Upstream) -> str | None:
    """The key from the environment variable the Provider names; an empty value counts as unset."""
    if not upstream.api_key_env:
        return None
    return os.environ.get(upstream.api_key_env) or None


# decisions (pure) ------------------------------------------------------------------------------


class StatusClass(NamedTuple):
    """What an upstream HTTP error status means to a caller."""

    code: str
    retryable: bool
    client_fault: bool


def classify_status(status: int) -> StatusClass:
    """Map an upstream error status to an error code and whether a retry (or a fallback) can help.
    Side-effect free."""
    if status == 429:
        return StatusClass("provider_rate_limited", True, False)
    if status in RETRYABLE_STATUSES:
        return StatusClass("provider_error", True, False)
    if status in (401, 403):
        return StatusClass("provider_auth_failed", False, False)
    if status == 404:
        return StatusClass("provider_model_not_found", False, False)
    if status in (400, 413, 422):
        return StatusClass("provider_rejected", False, True)
    return StatusClass("provider_error", False, False)


def retry_delay(attempt: int, status: int | None, retry_after: str | None, now: float, jitter: float = 0.0) -> float:
    """Seconds to wait before retry number `attempt` (0-based). Side-effect free.

    Exponential backoff 0.5 * 2**attempt, stretched by up to 25 % (`jitter` in [0, 1], the caller's
    random draw, so that clients retrying together spread out), capped at 8 s. A Retry-After that
    parses (delta-seconds, or an HTTP-date relative to `now` = time.time()) on a 429 or 503 wins,
    capped at 60 s; a negative, past or garbage one falls back to backoff.
    """
    if status in RETRY_AFTER_STATUSES and retry_after is not None:
        wanted = _parse_retry_after(retry_after, now)
        if wanted is not None:
            return min(wanted, RETRY_AFTER_CAP_S)
    backoff = BACKOFF_BASE_S * 2 ** min(attempt, 16) * (1 + JITTER_FRACTION * min(max(jitter, 0.0), 1.0))
    return min(backoff, BACKOFF_CAP_S)


def _parse_retry_after(value: str, now: float) -> float | None:
    """Retry-After as seconds from `now`, or None when it is garbage, negative or in the past."""
    value = value.strip()
    if re.fullmatch(r"\d{1,9}(\.\d{1,6})?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP-dates are GMT
        return None
    delay = when.timestamp() - now
    return delay if math.isfinite(delay) and delay >= 0 else None


# messages --------------------------------------------------------------------------------------


def _where(upstream: Upstream) -> str:
    """The provider label and host:port: enough to find the provider, without userinfo, path or query."""
    try:
        url = httpx.URL(upstream.base_url)
        port = url.port or {"http": 80, "https": 443}.get(url.scheme)
        place = f"{url.host}:{port}" if url.host else "an invalid base_url"
    except (httpx.InvalidURL, TypeError, ValueError):
        place = "an invalid base_url"
    return f"{upstream.label} at {place}"


def _upstream_text(text: str, key: str | None, limit: int = MAX_UPSTREAM_TEXT_CHARS) -> str:
    """Text taken from an upstream, safe to show: the key scrubbed, control characters flattened, truncated."""
    if key:
        text = text.replace(key, "***")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _openai_error_message(body: bytes) -> str | None:
    """The message of an OpenAI error envelope ({"error": {"message": ...}}; vLLM's flat
    {"object": "error", "message": ...} too), or None when the body is not one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if data.get("object") == "error" and isinstance(data.get("message"), str):
        return data["message"]
    return None


def _status_message(upstream: Upstream, status: int, body: bytes, key: str | None) -> str:
    """The message for an upstream error status. An auth failure never quotes the body: it may echo the key."""
    where = _where(upstream)
    if status in (401, 403):
        source = f"the key in ${upstream.api_key_env}" if upstream.api_key_env else "the Provider's api_key_env"
        sent = "" if key else " (no key was sent: the variable is unset or empty)"
        return f"{where}: authentication failed (HTTP {status}); check {source}{sent}"
    upstream_message = _openai_error_message(body)
    if upstream_message is None:
        detail = f"HTTP {status} without an OpenAI error body"
    else:
        detail = f"HTTP {status}: {_upstream_text(upstream_message, key)}"
    if status == 404:
        return f"{where}: model {upstream.model!r} or the endpoint was not found ({detail})"
    if status == 429:
        return f"{where}: rate limited by the provider ({detail})"
    if status in (400, 413, 422):
        return f"{where}: the provider rejected the request ({detail})"
    return f"{where}: provider error ({detail})"


def _error(message: str, code: str, status: int | None = None, client_fault: bool = False) -> ProviderError:
    return ProviderError(message[:MAX_MESSAGE_CHARS], code, status, client_fault)


class _Retryable(Exception):
    """An attempt failed in a way a later attempt may not: carries the error to raise when retries run out."""

    def __init__(self, error: ProviderError, retry_after: str | None = None):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _StreamEnded(Exception):
    """The event stream ended (connection closed cleanly) before `data: [DONE]`."""


class _MalformedChunk(Exception):
    """An SSE data event that is not JSON."""


# shape checks ----------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _completion_problem(data: Any) -> str | None:
    """Why a non-stream answer is not a chat completion, or None when it is one. `usage` may carry
    nested detail objects (OpenAI's *_tokens_details); only its token counts must be ints."""
    if not isinstance(data, dict):
        return "is not a JSON object"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return "has no choices"
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), (str, type(None))):
        return "has no choices[0].message.content string"
    usage = data.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return "has a usage that is not an object"
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    if usage and any(name in usage and not _is_int(usage[name]) for name in counts):
        return "has usage token counts that are not integers"
    return None


def _chunk_problem(data: Any) -> str | None:
    """Why a stream chunk is not a chat completion chunk (the final usage chunk has empty choices)."""
    if not isinstance(data, dict):
        return "is not a JSON object"
    if not isinstance(data.get("choices"), list):
        return "has no choices list"
    if any(not isinstance(choice, dict) or not isinstance(choice.get("delta", {}), dict) for choice in data["choices"]):
        return "has a choice whose delta is not an object"
    usage = data.get("usage")
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    if usage is not None and (not isinstance(usage, dict) or any(name in usage and not _is_int(usage[name]) for name in counts)):
        return "has a usage whose token counts are not integers"
    return None


def _models_in(data: Any) -> list[str] | None:
    """The model ids of a /models answer, or None when it does not have the OpenAI shape."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        return None
    ids = [entry.get("id") for entry in data["data"] if isinstance(entry, dict)]
    if len(ids) != len(data["data"]) or not all(isinstance(i, str) for i in ids):
        return None
    return ids


def _parse_json(raw: bytes) -> Any:
    """JSON or a ValueError; RecursionError (deeply nested hostile input) counts as not JSON."""
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


# bounded reading -------------------------------------------------------------------------------


async def _read_bounded(response: httpx.Response, limit: int) -> bytes | None:
    """The body, or None when it is (or says it is) larger than `limit`; never holds more than limit + one chunk."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body.extend(chunk)
        if len(body) > limit:
            return None
    return bytes(body)


async def _read_prefix(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of the body (an error body: its first part is all we quote)."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body.extend(chunk[: limit - len(body)])
        if len(body) >= limit:
            break
    return bytes(body)


class _LineTooLong(Exception):
    """An SSE line or event over MAX_LINE_BYTES."""


class _SSEEvents:
    """Splits a streamed body into SSE `data` events as bytes arrive, holding at most one line
    (≤ MAX_LINE_BYTES) plus one network chunk. Lines end with LF or CRLF (lone-CR framing is not
    used by OpenAI-compatible servers)."""

    def __init__(self, response: httpx.Response):
        self._chunks = response.aiter_bytes()
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no LF
        self._lines: deque[bytes] = deque()
        self._eof = False

    async def next_data(self) -> bytes:
        """The next event's data; raises _StreamEnded when the body ends first."""
        data: list[bytes] = []
        size = 0
        while True:
            line = await self._next_line()
            if line is None or (not line and data):
                if data:
                    return b"\n".join(data)
                raise _StreamEnded()
            if line.startswith(b"data:"):
                value = line[6:] if line.startswith(b"data: ") else line[5:]
                size += len(value)
                if size > MAX_LINE_BYTES:
                    raise _LineTooLong()
                data.append(value)
            # comments (": ping"), event:, id: and retry: fields carry nothing a chat client needs

    async def _next_line(self) -> bytes | None:
        while not self._lines:
            if self._eof:
                return self._take_rest()
            chunk = await anext(self._chunks, None)
            if chunk is None:
                self._eof = True
            else:
                self._split(chunk)
        return self._lines.popleft()

    def _split(self, chunk: bytes) -> None:
        self._buffer.extend(chunk)
        start = 0
        while (end := self._buffer.find(b"\n", max(start, self._scanned))) != -1:
            if end - start > MAX_LINE_BYTES:
                raise _LineTooLong()
            self._lines.append(bytes(self._buffer[start:end]).rstrip(b"\r"))
            start = end + 1
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if self._scanned > MAX_LINE_BYTES:
            raise _LineTooLong()

    def _take_rest(self) -> bytes | None:
        if not self._buffer:
            return None
        rest = bytes(self._buffer).rstrip(b"\r")
        self._buffer.clear()
        return rest


# rate limit ------------------------------------------------------------------------------------


class _TokenBucket:
    """requests_per_minute as a token bucket holding up to a minute's requests. A request reserves
    its token at once (the balance may go negative), so concurrent callers queue fairly."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self._rate = per_minute / 60.0
        self._capacity = float(per_minute)
        self._tokens = float(per_minute)
        self._clock = clock
        self._updated = clock()

    def reserve(self, max_wait_s: float) -> float | None:
        """Seconds the caller must wait before sending, or None (nothing reserved) when that exceeds max_wait_s."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        wait = max(0.0, (1.0 - self._tokens) / self._rate)
        if wait > max_wait_s:
            return None
        self._tokens -= 1.0
        return wait


# the client ------------------------------------------------------------------------------------


class ProviderClient:
    """Calls one provider model. One httpx.AsyncClient (connection pool) per instance, created
    lazily in the running event loop; close it with `aclose()`."""

    def __init__(self, upstream: Upstream, key: str | None = None, *,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep):
        self.upstream = upstream
        self._key = key
        self._sleep = sleep
        self._where = _where(upstream)
        self._http: httpx.AsyncClient | None = None
        self._bucket = _TokenBucket(upstream.requests_per_minute) if upstream.requests_per_minute else None

    # public ----------------------------------------------------------------------------------

    async def chat(self, body: dict) -> dict:
        """A non-streamed chat completion, retried on 429/5xx/timeouts/connection errors, shape-checked."""
        payload = {**body, "model": self.upstream.model, "stream": False}
        data = await self._with_retries(lambda: self._post_json(payload))
        problem = _completion_problem(data)
        if problem:
            raise _error(f"{self._where}: answered with JSON that {problem}", "provider_bad_response", 200)
        return data

    async def stream_chat(self, body: dict) -> AsyncIterator[dict]:
        """Streamed chat completion chunks, each yielded as it arrives. Retries happen only before
        the first chunk; after it a failure is provider_stream_broken (the caller has sent text on)."""
        # Usage is asked for always: the request log and metrics count a stream's tokens too.
        payload = {**body, "model": self.upstream.model, "stream": True, "stream_options": {"include_usage": True}}
        response, events, chunk = await self._with_retries(lambda: self._open_stream(payload))
        try:
            while chunk is not None:
                yield chunk
                chunk = await self._next_chunk(events)
        finally:
            with contextlib.suppress(httpx.HTTPError):
                await response.aclose()

    async def list_models(self) -> list[str]:
        """The model ids the provider lists now: one attempt, bounded by timeout_s (plan must not wait on retries)."""
        try:
            data = await self._get_json("/models")
        except _Retryable as failure:
            raise failure.error from failure.__cause__
        models = _models_in(data)
        if models is None:
            raise _error(f"{self._where}: /models answered without a data[].id list", "provider_bad_response", 200)
        return models

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            with contextlib.suppress(httpx.HTTPError):
                await http.aclose()

    # attempts --------------------------------------------------------------------------------

    async def _with_retries(self, attempt: Callable[[], Awaitable[Any]]) -> Any:
        retries = max(0, self.upstream.max_retries)
        for number in range(retries):
            try:
                return await attempt()
            except _Retryable as failure:
                status = failure.error.status
                await self._sleep(retry_delay(number, status, failure.retry_after, time.time(), random.random()))
        try:
            return await attempt()
        except _Retryable as failure:
            raise self._exhausted(failure.error, retries + 1) from failure.__cause__

    @staticmethod
    def _exhausted(error: ProviderError, attempts: int) -> ProviderError:
        suffix = f" (after {attempts} attempts)" if attempts > 1 else ""
        return _error(f"{error}{suffix}", error.code, error.status, error.client_fault)

    async def _post_json(self, payload: dict) -> Any:
        async with self._attempt():
            async with self._client().stream("POST", self._url("/chat/completions"), json=payload,
                                             headers=self._headers("application/json")) as response:
                await self._check_status(response)
                return await self._json_body(response)

    async def _get_json(self, path: str) -> Any:
        async with self._attempt():
            async with self._client().stream("GET", self._url(path), headers=self._headers("application/json")) as response:
                await self._check_status(response)
                return await self._json_body(response)

    async def _open_stream(self, payload: dict) -> tuple[httpx.Response, _SSEEvents, dict | None]:
        """Send the request and read up to the first chunk (the part that may still be retried)."""
        async with self._attempt():
            request = self._client().build_request("POST", self._url("/chat/completions"), json=payload,
                                                   headers=self._headers("text/event-stream"))
            response = await self._client().send(request, stream=True)
            try:
                await self._check_status(response)
                self._check_event_stream(response)
                events = _SSEEvents(response)
                return response, events, await self._first_chunk(events)
            except BaseException:
                with contextlib.suppress(httpx.HTTPError):
                    await response.aclose()
                raise

    async def _first_chunk(self, events: _SSEEvents) -> dict | None:
        try:
            return self._chunk_or_done(await events.next_data())
        except _StreamEnded:
            raise _Retryable(_error(f"{self._where}: the stream ended before its first chunk",
                                    "provider_stream_broken", 200)) from None
        except _MalformedChunk:
            raise _error(f"{self._where}: sent a stream chunk that is not JSON", "provider_bad_response", 200) from None

    async def _next_chunk(self, events: _SSEEvents) -> dict | None:
        """The next chunk, None at [DONE]; any failure now is provider_stream_broken (shape and size: bad_response)."""
        try:
            async with asyncio.timeout(self.upstream.timeout_s):
                return self._chunk_or_done(await events.next_data())
        except ProviderError:
            raise
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise self._broken(f"no chunk for {self.upstream.timeout_s:g} s") from exc
        except _StreamEnded:
            raise self._broken("the stream ended without [DONE]") from None
        except _MalformedChunk:
            raise self._broken("a stream chunk is not JSON") from None
        except _LineTooLong:
            raise self._too_long() from None
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise self._broken(f"the connection broke ({type(exc).__name__})") from exc

    def _broken(self, why: str) -> ProviderError:
        return _error(f"{self._where}: stream broken after it started: {why}", "provider_stream_broken", 200)

    def _too_long(self) -> ProviderError:
        return _error(f"{self._where}: sent a stream line over {MAX_LINE_BYTES // 1024} KiB", "provider_bad_response", 200)

    def _chunk_or_done(self, data: bytes) -> dict | None:
        if data.strip() == b"[DONE]":
            return None
        try:
            chunk = _parse_json(data)
        except ValueError:
            raise _MalformedChunk() from None
        if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
            message = _openai_error_message(data) or "an error event without an OpenAI error body"
            raise _error(f"{self._where}: provider error in the stream: {_upstream_text(message, self._key)}",
                         "provider_error", 200)
        problem = _chunk_problem(chunk)
        if problem:
            raise _error(f"{self._where}: sent a stream chunk that {problem}", "provider_bad_response", 200)
        return chunk

    # the boundary ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _attempt(self):
        """One attempt: rate-limited, bounded by timeout_s, every httpx failure translated."""
        await self._throttle()
        try:
            async with asyncio.timeout(self.upstream.timeout_s):
                yield
        except (ProviderError, _Retryable):
            raise
        except _LineTooLong:
            raise self._too_long() from None
        except TimeoutError as exc:
            raise self._timed_out() from exc
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            raise self._transport_failure(exc) from exc

    def _timed_out(self) -> _Retryable:
        return _Retryable(_error(f"{self._where}: no answer within {self.upstream.timeout_s:g} s", "provider_timeout"))

    def _transport_failure(self, exc: Exception) -> _Retryable | ProviderError:
        """httpx's failure as ours: timeouts and lost connections may pass on retry, a bad URL never will."""
        detail = _upstream_text(f"{type(exc).__name__}: {exc}", self._key, 200)
        if isinstance(exc, httpx.TimeoutException):
            return self._timed_out()
        if isinstance(exc, httpx.ConnectError):
            return _Retryable(_error(f"{self._where}: cannot connect ({detail})", "provider_unreachable"))
        if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)):
            return _Retryable(_error(f"{self._where}: the connection broke ({detail})", "provider_unreachable"))
        if isinstance(exc, httpx.DecodingError):
            return _error(f"{self._where}: sent a body that cannot be decoded ({detail})", "provider_bad_response", 200)
        return _error(f"{self._where}: cannot send the request ({detail})", "provider_unreachable")

    async def _throttle(self) -> None:
        if self._bucket is None:
            return
        wait = self._bucket.reserve(self.upstream.timeout_s)
        if wait is None:
            raise _error(f"{self._where}: over the client-side limit of {self.upstream.requests_per_minute} "
                         f"requests per minute (the wait would exceed timeout_s {self.upstream.timeout_s:g} s)",
                         "provider_rate_limited")
        if wait > 0:
            await self._sleep(wait)

    async def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        body = b"" if status in (401, 403) else await _read_prefix(response, MAX_ERROR_BODY_BYTES)
        kind = classify_status(status)
        error = _error(_status_message(self.upstream, status, body, self._key), kind.code, status, kind.client_fault)
        if kind.retryable:
            raise _Retryable(error, response.headers.get("retry-after"))
        raise error

    def _check_event_stream(self, response: httpx.Response) -> None:
        content_type = response.headers.get("content-type")
        if content_type and not content_type.lower().startswith("text/event-stream"):
            shown = _upstream_text(content_type, self._key, 80)
            raise _error(f"{self._where}: answered a stream request with {shown}, not text/event-stream",
                         "provider_bad_response", response.status_code)

    async def _json_body(self, response: httpx.Response) -> Any:
        raw = await _read_bounded(response, MAX_BODY_BYTES)
        if raw is None:
            raise _error(f"{self._where}: answered with a body over {MAX_BODY_BYTES // 2**20} MiB",
                         "provider_bad_response", response.status_code)
        try:
            return _parse_json(raw)
        except ValueError:
            raise _error(f"{self._where}: answered HTTP {response.status_code} with a body that is not JSON",
                         "provider_bad_response", response.status_code) from None

    # plumbing --------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # redirects are not followed: one could carry the Authorization header to another host
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(self.upstream.timeout_s), follow_redirects=False)
        return self._http

    def _url(self, path: str) -> str:
        return self.upstream.base_url.rstrip("/") + path

    def _headers(self, accept: str) -> dict[str, str]:
        # identity: a compressed body could expand far beyond what we count on the wire
        headers = {"Accept": accept, "Accept-Encoding": "identity"}
        if self._key is not None:
            if not (self._key.isascii() and self._key.isprintable()):
                source = f"${self.upstream.api_key_env}" if self.upstream.api_key_env else "the key"
                raise _error(f"{self._where}: {source} is not a printable ASCII string", "provider_auth_failed")
            headers["Authorization"] = f"Bearer {self._key}"
        return headers


def list_models_now(upstream: Upstream, key: str | None, timeout_s: float) -> list[str]:
    """The provider's model ids, synchronously (for `plan` and apply, which are not async).

    Runs in its own daemon thread and event loop, so it works whether or not the caller is inside
    a loop, and returns within timeout_s (+ a small hand-over grace) even when a DNS lookup, which
    no event loop can cancel, hangs: that thread is then abandoned.
    """
    bounded = dataclasses.replace(upstream, timeout_s=timeout_s, requests_per_minute=None)
    outcome: dict[str, Any] = {}
    done = threading.Event()

    async def fetch() -> None:
        client = ProviderClient(bounded, key)
        try:
            outcome["models"] = await client.list_models()
        except Exception as exc:  # noqa: BLE001 - handed to the calling thread, which raises it
            outcome["error"] = exc
        finally:
            done.set()
            await client.aclose()

    threading.Thread(target=asyncio.run, args=(fetch(),), name="llmops-list-models", daemon=True).start()
    if not done.wait(timeout_s + LIST_MODELS_GRACE_S):
        raise _error(f"{_where(upstream)}: /models gave no answer within {timeout_s:g} s", "provider_timeout")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["models"]
