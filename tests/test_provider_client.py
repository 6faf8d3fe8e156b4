"""The provider client (llmops_engine/providers/client.py): its pure decisions as scenario tables,
then real HTTP calls against the fault-injecting upstream in tests/provider_server.py.

Waits between retries go through the client's injectable `sleep`, recorded instead of slept, so
retry and Retry-After behaviour is asserted exactly and the file stays fast. Only 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import pickle
import random
import socket
import time

import pytest

from llmops_engine.errors import ProviderError
from llmops_engine.providers.client import (
    MAX_MESSAGE_CHARS,
    ProviderClient,
    StatusClass,
    Upstream,
    api_key,
    classify_status,
    list_models_now,
    retry_delay,
)

from tests.provider_server import FakeProvider

KEY = "sk-test-4f1d9c2a7e"
BODY = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there world"}]}
NOW = 1_800_000_000.0


class Waits(list):
    """The client's `sleep`: records each wait instead of sleeping."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def upstream():
    with FakeProvider(models=["support-api", "small-2"], key=KEY) as server:
        yield server


def model_of(server: FakeProvider, **overrides) -> Upstream:
    settings = {"provider": "acme", "alias": "support", "base_url": server.url, "model": "support-api",
                "api_key_env": "ACME_KEY", "timeout_s": 2.0, "max_retries": 2} | overrides
    return Upstream(**settings)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def with_client(model: Upstream, key: str | None, waits: Waits, call):
    client = ProviderClient(model, key, sleep=waits)
    try:
        return await call(client)
    finally:
        await client.aclose()


def chat(model: Upstream, key: str | None = KEY, body: dict = BODY) -> tuple[dict, Waits]:
    waits = Waits()
    return asyncio.run(with_client(model, key, waits, lambda c: c.chat(body))), waits


def chat_error(model: Upstream, key: str | None = KEY, body: dict = BODY) -> tuple[ProviderError, Waits]:
    waits = Waits()
    with pytest.raises(ProviderError) as caught:
        asyncio.run(with_client(model, key, waits, lambda c: c.chat(body)))
    assert_clean(caught.value, model, key)
    return caught.value, waits


def stream(model: Upstream, key: str | None = KEY, body: dict = BODY) -> tuple[list[dict], ProviderError | None, Waits]:
    """The chunks received and the error that ended the stream, if any."""
    chunks, waits = [], Waits()

    async def consume(client: ProviderClient):
        try:
            async for chunk in client.stream_chat(body):
                chunks.append(chunk)
        except ProviderError as exc:
            assert_clean(exc, model, key)
            return exc
        return None

    return chunks, asyncio.run(with_client(model, key, waits, consume)), waits


def assert_clean(error: ProviderError, model: Upstream, key: str | None) -> None:
    """What every provider error message must be: short, locatable, and free of secrets and bodies."""
    message = str(error)
    assert len(message) <= MAX_MESSAGE_CHARS
    assert model.label in message
    port = model.base_url.split(":")[2].split("/")[0]
    assert f"127.0.0.1:{port}" in message
    assert not key or key not in message
    assert "hello there world" not in message  # the request body never reaches a message


def text_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


# decisions -------------------------------------------------------------------------------------

HTTP_DATE_IN_20S = email.utils.formatdate(NOW + 20, usegmt=True)
HTTP_DATE_PAST = email.utils.formatdate(NOW - 20, usegmt=True)


@pytest.mark.parametrize(
    "attempt, status, retry_after, jitter, expected",
    [
        (0, 500, None, 0.0, 0.5),  # backoff starts at 0.5 s
        (1, 500, None, 0.0, 1.0),  # and doubles
        (3, None, None, 0.0, 4.0),  # timeouts and connection errors back off too
        (4, 502, None, 0.0, 8.0),
        (9, 502, None, 0.0, 8.0),  # capped at 8 s
        (0, 500, None, 1.0, 0.625),  # jitter adds up to 25 %
        (4, 500, None, 1.0, 8.0),  # the cap holds with jitter
        (0, 429, "7", 1.0, 7.0),  # Retry-After seconds win over backoff (no jitter on them)
        (0, 503, "2.5", 0.0, 2.5),
        (2, 429, "0", 0.0, 0.0),
        (0, 429, "120", 0.0, 60.0),  # capped at 60 s
        (0, 429, HTTP_DATE_IN_20S, 0.0, 20.0),  # an HTTP-date, relative to now
        (0, 429, HTTP_DATE_PAST, 0.0, 0.5),  # a past date falls back to backoff
        (0, 429, "-1", 0.0, 0.5),  # negative: backoff
        (1, 429, "soon", 0.0, 1.0),  # garbage: backoff
        (0, 429, "", 0.0, 0.5),
        (0, 429, "inf", 0.0, 0.5),
        (0, 429, "1e9", 0.0, 0.5),
        (0, 500, "7", 0.0, 0.5),  # Retry-After is only defined for 429 and 503
        (0, None, "7", 0.0, 0.5),
    ],
)
def test_retry_delay(attempt, status, retry_after, jitter, expected):
    assert retry_delay(attempt, status, retry_after, NOW, jitter) == pytest.approx(expected)


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 5])
def test_retry_delay_jitter_stays_within_a_quarter_of_the_backoff(attempt):
    draws = random.Random(attempt)
    base = min(0.5 * 2**attempt, 8.0)
    delays = [retry_delay(attempt, 503, None, NOW, draws.random()) for _ in range(200)]
    assert all(base <= d <= min(base * 1.25, 8.0) for d in delays)
    if base < 8.0:
        assert len(set(delays)) > 100  # jitter actually spreads clients out


@pytest.mark.parametrize(
    "status, code, retryable, client_fault",
    [
        (429, "provider_rate_limited", True, False),
        (500, "provider_error", True, False),
        (502, "provider_error", True, False),
        (503, "provider_error", True, False),
        (504, "provider_error", True, False),
        (501, "provider_error", False, False),  # other 5xx: not retried
        (505, "provider_error", False, False),
        (401, "provider_auth_failed", False, False),
        (403, "provider_auth_failed", False, False),
        (404, "provider_model_not_found", False, False),
        (400, "provider_rejected", False, True),
        (413, "provider_rejected", False, True),
        (422, "provider_rejected", False, True),
        (409, "provider_error", False, False),
        (307, "provider_error", False, False),  # redirects are not followed (the key must not travel)
    ],
)
def test_status_classification(status, code, retryable, client_fault):
    assert classify_status(status) == StatusClass(code, retryable, client_fault)


def test_upstream_travels_as_json_and_labels_itself():
    model = Upstream("acme", "support", "http://127.0.0.1:9/v1", "m-1", "ACME_KEY", 3.0, 1, 60)
    assert Upstream.from_json(json.loads(json.dumps(model.to_json()))) == model
    assert model.label == "provider:acme/support"


@pytest.mark.parametrize("env, expected", [({"ACME_KEY": "sk-1"}, "sk-1"), ({"ACME_KEY": ""}, None), ({}, None)])
def test_api_key_comes_from_the_named_variable(monkeypatch, env, expected):
    monkeypatch.delenv("ACME_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert api_key(Upstream("acme", "a", "http://127.0.0.1:9/v1", "m", "ACME_KEY")) == expected
    assert api_key(Upstream("acme", "a", "http://127.0.0.1:9/v1", "m")) is None


def test_provider_error_survives_pickling():
    error = pickle.loads(pickle.dumps(ProviderError("boom", "provider_rejected", 400, True)))
    assert (str(error), error.code, error.status, error.client_fault) == ("boom", "provider_rejected", 400, True)


# chat ------------------------------------------------------------------------------------------


def test_chat_sends_the_pinned_model_and_the_key(upstream):
    answer, waits = chat(model_of(upstream), body={**BODY, "model": "caller-choice", "stream": True})
    assert answer["choices"][0]["message"]["content"] == "echo: hello there world"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    path, headers, sent = upstream.requests[-1]
    assert path == "/v1/chat/completions"
    assert (sent["model"], sent["stream"], sent["messages"]) == ("support-api", False, BODY["messages"])
    assert headers["authorization"] == f"Bearer {KEY}"
    assert waits == []


@pytest.mark.parametrize(
    "script, timeout_s",
    [
        (["429", "ok"], 2.0),
        (["500", "503", "ok"], 2.0),
        (["502", "504", "ok"], 2.0),
        (["429:retry-after=1", "500", "ok"], 2.0),
        (["hang", "ok"], 0.3),  # a timed-out attempt is retried
        (["slow:1", "ok"], 0.3),
        (["error_shape", "ok"], 2.0),  # a 500 without an OpenAI body is still a 500
    ],
)
def test_chat_retries_until_an_attempt_succeeds(upstream, script, timeout_s):
    upstream.script(script)
    answer, waits = chat(model_of(upstream, timeout_s=timeout_s))
    assert answer["choices"][0]["message"]["content"] == "echo: hello there world"
    assert upstream.attempts() == len(script)
    assert len(waits) == len(script) - 1


@pytest.mark.parametrize(
    "script, code, status, message_part",
    [
        (["500"] * 3, "provider_error", 500, "HTTP 500: fake upstream answered 500"),
        (["503"] * 3, "provider_error", 503, "HTTP 503"),
        (["429"] * 3, "provider_rate_limited", 429, "rate limited by the provider"),
        (["error_shape"] * 3, "provider_error", 500, "HTTP 500 without an OpenAI error body"),
        (["hang"] * 3, "provider_timeout", None, "no answer within 0.3 s"),
    ],
)
def test_chat_exhausted_retries_raise_the_last_failure(upstream, script, code, status, message_part):
    upstream.script(script)
    # A short timeout only where the timeout is the point: a busy machine must not turn a 429 into one.
    error, waits = chat_error(model_of(upstream, timeout_s=0.3 if script[0] == "hang" else 5.0))
    assert (error.code, error.status, error.client_fault) == (code, status, False)
    assert message_part in str(error) and "after 3 attempts" in str(error)
    assert upstream.attempts() == 3 and len(waits) == 2
    assert all(0.5 * 2**i <= w <= 0.625 * 2**i for i, w in enumerate(waits))  # backoff with jitter


def test_chat_to_a_closed_port_is_unreachable_after_its_retries():
    model = Upstream("acme", "support", f"http://127.0.0.1:{closed_port()}/v1", "m", max_retries=1)
    error, waits = chat_error(model, key=None)
    assert (error.code, error.status) == ("provider_unreachable", None)
    assert "cannot connect" in str(error) and len(waits) == 1


@pytest.mark.parametrize(
    "behaviour, code, status, client_fault, message_part",
    [
        ("401", "provider_auth_failed", 401, False, "authentication failed (HTTP 401); check the key in $ACME_KEY"),
        ("403", "provider_auth_failed", 403, False, "authentication failed (HTTP 403)"),
        ("404", "provider_model_not_found", 404, False, "model 'support-api' or the endpoint was not found"),
        ("400", "provider_rejected", 400, True, "rejected the request (HTTP 400: fake upstream answered 400)"),
        ("413", "provider_rejected", 413, True, "HTTP 413"),
        ("422", "provider_rejected", 422, True, "HTTP 422"),
        ("501", "provider_error", 501, False, "HTTP 501"),
        ("non_json", "provider_bad_response", 200, False, "answered HTTP 200 with a body that is not JSON"),
        ("bad_shape", "provider_bad_response", 200, False, "answered with JSON that has no choices"),
        ("huge", "provider_bad_response", 200, False, "a body over 8 MiB"),  # counted while streaming
        ("huge_declared", "provider_bad_response", 200, False, "a body over 8 MiB"),  # refused by Content-Length
    ],
)
def test_chat_failures_that_a_retry_cannot_fix_are_not_retried(upstream, behaviour, code, status, client_fault, message_part):
    upstream.script([behaviour, "ok"])
    error, waits = chat_error(model_of(upstream))
    assert (error.code, error.status, error.client_fault) == (code, status, client_fault)
    assert message_part in str(error)
    assert upstream.attempts() == 1 and waits == []
    if code == "provider_auth_failed":
        assert "fake upstream answered" not in str(error)  # never the body: it may echo the key


def test_a_wrong_key_is_never_quoted_even_when_the_upstream_echoes_it(upstream):
    wrong = "sk-wrong-0c7d55e1"
    error, _ = chat_error(model_of(upstream), key=wrong)
    assert (error.code, error.status) == ("provider_auth_failed", 401)
    assert wrong not in str(error) and "Incorrect API key" not in str(error)


def test_a_missing_key_says_none_was_sent(upstream):
    error, _ = chat_error(model_of(upstream), key=None)
    assert error.code == "provider_auth_failed" and "no key was sent" in str(error)
    assert "authorization" not in upstream.requests[-1][1]


def test_a_key_echoed_in_an_upstream_message_is_scrubbed(upstream):
    upstream.script(["400:echo-key"])
    error, _ = chat_error(model_of(upstream))
    assert error.client_fault and "Authorization: Bearer ***" in str(error)


def test_a_long_upstream_message_is_truncated(upstream):
    upstream.script(["400:long"])
    error, _ = chat_error(model_of(upstream))
    quoted = str(error).split("HTTP 400: ", 1)[1]
    assert quoted.startswith("very long upstream complaint") and len(quoted) <= 301


def test_retry_after_is_honoured_as_seconds_and_as_an_http_date(upstream):
    in_20s = email.utils.formatdate(time.time() + 20, usegmt=True)
    upstream.script(["429:retry-after=7", f"503:retry-after={in_20s}", "ok"])
    _, waits = chat(model_of(upstream))
    assert waits[0] == 7.0 and 18.5 <= waits[1] <= 20.0


@pytest.mark.parametrize(
    "base_url, key",
    [
        ("ftp://127.0.0.1:21/v1", KEY),  # unsupported scheme
        ("not a url", KEY),
        ("http://127.0.0.1:9/v1", "sk-has\nnewline"),  # a key that cannot be a header value
    ],
)
def test_no_httpx_exception_escapes(base_url, key):
    model = Upstream("acme", "support", base_url, "m", max_retries=0)
    with pytest.raises(ProviderError) as caught:
        asyncio.run(with_client(model, key, Waits(), lambda c: c.chat(BODY)))
    assert caught.value.code in ("provider_unreachable", "provider_auth_failed")
    assert "sk-has" not in str(caught.value) and model.label in str(caught.value)


# streaming -------------------------------------------------------------------------------------


def test_stream_passes_chunks_and_the_usage_chunk(upstream):
    chunks, error, _ = stream(model_of(upstream), body={**BODY, "stream_options": {"include_usage": True}})
    assert error is None
    assert text_of(chunks) == "echo: hello there world"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert upstream.requests[-1][2]["stream"] is True
    assert upstream.requests[-1][1]["accept"] == "text/event-stream"


def test_stream_yields_each_chunk_as_it_arrives(upstream):
    upstream.script(["ok:chunk-delay=0.4"])  # 4 words + finish: 4 pauses of 0.4 s after the first chunk
    seen: dict[str, float | int] = {}

    async def first_then_rest(client: ProviderClient):
        started = time.monotonic()
        async for chunk in client.stream_chat(BODY):
            if not seen:
                seen.update(after_s=time.monotonic() - started, server_sent=upstream.chunks_sent)
        seen["total_s"] = time.monotonic() - started

    asyncio.run(with_client(model_of(upstream), KEY, Waits(), first_then_rest))
    assert seen["server_sent"] < 5, "the first chunk reached the caller only after the server had sent them all"
    assert seen["after_s"] < seen["total_s"] - 1.0 and seen["total_s"] >= 1.6  # the rest came 4 pauses later


def test_a_stream_broken_after_its_first_chunk_is_not_retried(upstream):
    upstream.script(["broken_stream", "ok"])
    chunks, error, waits = stream(model_of(upstream))
    assert text_of(chunks) == "echo: hello"
    assert (error.code, error.status) == ("provider_stream_broken", 200)
    assert upstream.attempts() == 1 and waits == []


def test_a_stalled_stream_breaks_after_timeout_s(upstream):
    upstream.script(["ok:chunk-delay=2"])
    started = time.monotonic()
    chunks, error, _ = stream(model_of(upstream, timeout_s=0.3))
    assert len(chunks) == 1 and error.code == "provider_stream_broken" and "no chunk for 0.3 s" in str(error)
    assert time.monotonic() - started < 1.9  # the 2 s chunk was not waited for


@pytest.mark.parametrize("script, timeout_s", [(["500", "ok"], 2.0), (["429", "503", "ok"], 2.0), (["hang", "ok"], 1.0)])
def test_a_stream_is_retried_before_its_first_chunk(upstream, script, timeout_s):
    upstream.script(script)
    chunks, error, waits = stream(model_of(upstream, timeout_s=timeout_s))
    assert error is None and text_of(chunks) == "echo: hello there world"
    assert upstream.attempts() == len(script) and len(waits) == len(script) - 1


@pytest.mark.parametrize(
    "behaviour, code, message_part",
    [
        ("huge_line", "provider_bad_response", "a stream line over 1024 KiB"),
        ("non_json", "provider_bad_response", "with text/html, not text/event-stream"),
        ("401", "provider_auth_failed", "authentication failed"),
        ("400:echo-key", "provider_rejected", "Bearer ***"),
    ],
)
def test_stream_failures_before_the_first_chunk(upstream, behaviour, code, message_part):
    upstream.script([behaviour])
    chunks, error, waits = stream(model_of(upstream))
    assert chunks == [] and error.code == code and message_part in str(error)
    assert upstream.attempts() == 1 and waits == []


# list_models -----------------------------------------------------------------------------------


def test_list_models_follows_the_upstream_listing(upstream):
    model = model_of(upstream)
    assert asyncio.run(with_client(model, KEY, Waits(), lambda c: c.list_models())) == ["support-api", "small-2"]
    upstream.models = ["small-2"]  # support-api deprecated upstream
    assert list_models_now(model, KEY, 2.0) == ["small-2"]
    assert upstream.requests[-1][0] == "/v1/models"


@pytest.mark.parametrize(
    "behaviour, code",
    [("500", "provider_error"), ("401", "provider_auth_failed"), ("bad_shape", "provider_bad_response")],
)
def test_list_models_makes_one_attempt(upstream, behaviour, code):
    upstream.script([behaviour, "ok"])
    waits = Waits()
    with pytest.raises(ProviderError) as caught:
        asyncio.run(with_client(model_of(upstream), KEY, waits, lambda c: c.list_models()))
    assert caught.value.code == code and upstream.attempts("/v1/models") == 1 and waits == []
    assert_clean(caught.value, model_of(upstream), KEY)


def test_list_models_now_is_bounded_when_the_provider_hangs(upstream):
    upstream.script(["hang"])
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        list_models_now(model_of(upstream, timeout_s=30.0), KEY, 0.5)
    assert caught.value.code == "provider_timeout" and time.monotonic() - started < 0.5 + 3  # not the 30 s


def test_list_models_now_reports_an_unreachable_provider():
    model = Upstream("acme", "support", f"http://127.0.0.1:{closed_port()}/v1", "m")
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        list_models_now(model, None, 1.0)
    assert caught.value.code == "provider_unreachable" and time.monotonic() - started < 1.0 + 3
    assert_clean(caught.value, model, None)


# client-side rate limit ------------------------------------------------------------------------


def test_rate_limit_refuses_a_call_that_would_wait_longer_than_timeout_s(upstream):
    async def three_calls(client: ProviderClient):
        await client.chat(BODY)
        await client.chat(BODY)
        with pytest.raises(ProviderError) as caught:
            await client.chat(BODY)
        return caught.value

    waits = Waits()
    model = model_of(upstream, requests_per_minute=2, timeout_s=5.0)
    error = asyncio.run(with_client(model, KEY, waits, three_calls))
    assert (error.code, error.status) == ("provider_rate_limited", None)
    assert "2 requests per minute" in str(error)
    assert upstream.attempts() == 2 and waits == []


def test_rate_limit_waits_when_the_wait_fits_in_timeout_s(upstream):
    async def three_calls(client: ProviderClient):
        for _ in range(3):
            await client.chat(BODY)

    waits = Waits()
    asyncio.run(with_client(model_of(upstream, requests_per_minute=2, timeout_s=60.0), KEY, waits, three_calls))
    assert upstream.attempts() == 3
    assert len(waits) == 1 and 29.0 <= waits[0] <= 30.0  # one token every 30 s
