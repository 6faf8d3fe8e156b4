"""A fault-injecting OpenAI-compatible upstream for tests: a real HTTP/1.1 server on 127.0.0.1.

Provider tests (client, serving, evaluation) need an upstream that misbehaves on cue: 429 with
Retry-After, 5xx, slow and hanging answers, non-JSON, wrong shapes, streams that break. A
hand-written asyncio server gives byte-level control (a stream can stop mid-body, a 9 MiB body
can be sent chunked) that a framework would hide. It runs its own event loop in a daemon thread,
answers one request per connection (`Connection: close`), and records every request.

    with FakeProvider(models=["support-api"], key="sk-test") as upstream:
        upstream.script(["429:retry-after=1", "500", "ok"])   # one behaviour per request, then "ok"
        ... call upstream.url ...
        upstream.requests  # [(path, headers with lower-case names, parsed JSON body or None), ...]

Behaviours: "ok" ("ok:chunk-delay=<s>" paces stream chunks), "<status>" (an OpenAI error envelope
with that status, e.g. "500", "503", "401", "404"), "429:retry-after=<value>", "400:echo-key" (the
message echoes the Authorization header, as careless upstreams do), "400:long" (a 5,800-character
message), "slow:<s>" (delay, then "ok"),
"hang" (no answer until the client goes away), "non_json" (200 text/html), "bad_shape" (200 JSON
without choices), "error_shape" (500 with a non-OpenAI body), "broken_stream" (2 chunks, then the
connection closes mid-body), "huge" (a 9 MiB chunked 200 body), "huge_declared" (the same with a
Content-Length), "huge_line" (a stream whose first line is 2 MiB).
Requests with a wrong or missing key get a 401 envelope (echoing the key presented, as OpenAI
does) without consuming a behaviour; a model not in `models` gets a 404 envelope.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from typing import Any

HUGE_BYTES = 9 * 1024 * 1024
HUGE_LINE_BYTES = 2 * 1024 * 1024
READY_TIMEOUT_S = 10.0
STATUS_TEXT = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
               413: "Payload Too Large", 422: "Unprocessable Entity", 429: "Too Many Requests",
               500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class FakeProvider:
    """The upstream; see the module docstring. `models` may be reassigned while it runs (deprecation)."""

    def __init__(self, models: list[str] | tuple[str, ...] = ("support-api",), key: str | None = None,
                 chunk_delay_s: float = 0.0):
        self.models = list(models)
        self.key = key
        self.chunk_delay_s = chunk_delay_s
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.chunks_sent = 0  # stream chunks written so far, over all requests
        self.port = 0
        self._script: collections.deque[str] = collections.deque()
        self._ready = threading.Event()
        self._failures: list[BaseException] = []  # unexpected server-side errors: they fail the test at exit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._connections: set[asyncio.Task] = set()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, behaviours: list[str]) -> None:
        """Replace the behaviours still pending: one per request, in order, then "ok"."""
        self._script = collections.deque(behaviours)

    def attempts(self, path: str = "/v1/chat/completions") -> int:
        return sum(1 for p, _, _ in self.requests if p == path)

    # lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> FakeProvider:
        self._thread = threading.Thread(target=self._run, name="fake-provider", daemon=True)
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT_S) or self._failures:
            raise RuntimeError(f"fake provider did not start: {self._failures}")
        return self

    def __exit__(self, *exc_info) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(READY_TIMEOUT_S)
            assert not self._thread.is_alive(), "fake provider did not shut down"
        if self._failures and exc_info[0] is None:
            raise AssertionError(f"fake provider failed while serving: {self._failures!r}")

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__/__exit__, not as a thread crash
            self._failures.append(exc)
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    # one connection = one request ---------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            await self._answer(await _read_request(reader), reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away (often on purpose: timeouts, bounded reads)
        except Exception as exc:  # noqa: BLE001 - kept for __exit__ to report
            self._failures.append(exc)
        finally:
            writer.close()
            self._connections.discard(task)

    async def _answer(self, request: tuple[str, str, dict[str, str], Any], reader, writer) -> None:
        method, path, headers, body = request
        self.requests.append((path, headers, body))
        if self.key is not None and headers.get("authorization") != f"Bearer {self.key}":
            presented = headers.get("authorization", "").removeprefix("Bearer ")
            return await _send_json(writer, 401, _envelope(f"Incorrect API key provided: {presented}",
                                                           "invalid_request_error", "invalid_api_key"))
        name, _, arg = (self._script.popleft() if self._script else "ok").partition(":")
        if path == "/v1/models" and method == "GET":
            return await self._models(name, arg, reader, writer)
        if path != "/v1/chat/completions" or method != "POST" or not isinstance(body, dict):
            return await _send_json(writer, 404, _envelope(f"no route {method} {path}", "invalid_request_error"))
        if body.get("model") not in self.models:
            return await _send_json(writer, 404, _envelope(f"The model `{body.get('model')}` does not exist",
                                                           "invalid_request_error", "model_not_found"))
        await self._behave(name, arg, body, headers, reader, writer)

    async def _models(self, name: str, arg: str, reader, writer) -> None:
        if name == "slow":
            await asyncio.sleep(float(arg))
            name = "ok"
        if name == "ok":
            listing = {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]}
            return await _send_json(writer, 200, listing)
        await self._behave(name, arg, {}, {}, reader, writer)

    async def _behave(self, name: str, arg: str, body: dict, headers: dict, reader, writer) -> None:
        if name == "ok":
            return await self._complete(body, writer, float(arg.split("=")[1]) if arg else self.chunk_delay_s)
        if name == "slow":
            await asyncio.sleep(float(arg))
            return await self._complete(body, writer, self.chunk_delay_s)
        if name == "hang":
            while await reader.read(1024):
                pass
            return None
        if name.isdigit():
            return await self._error_status(int(name), arg, headers, writer)
        await FAULTS[name](self, body, writer)

    async def _error_status(self, status: int, arg: str, headers: dict, writer) -> None:
        extra = {}
        if arg.startswith("retry-after="):
            extra["Retry-After"] = arg.removeprefix("retry-after=")
        message = f"fake upstream answered {status}"
        if arg == "echo-key":
            message = f"invalid request sent with Authorization: {headers.get('authorization', '')}"
        if arg == "long":
            message = "very long upstream complaint " * 200
        code = "invalid_api_key" if status == 401 else None
        await _send_json(writer, status, _envelope(message, "fake_error", code), extra)

    # successful answers ------------------------------------------------------------------------

    async def _complete(self, body: dict, writer, chunk_delay_s: float) -> None:
        answer = "echo: " + _last_user_content(body.get("messages"))
        if body.get("stream"):
            await self._stream(body, answer, writer, chunk_delay_s)
        else:
            await _send_json(writer, 200, _completion(body, answer))

    async def _stream(self, body: dict, answer: str, writer, chunk_delay_s: float, stop_after: int | None = None) -> None:
        await _send_head(writer, 200, "text/event-stream", chunked=True)
        words = answer.split(" ")
        for index, word in enumerate(words):
            if index and chunk_delay_s:
                await asyncio.sleep(chunk_delay_s)
            if stop_after is not None and index == stop_after:
                return None  # close mid-body: no terminating chunk, no [DONE]
            await self._send_event(writer, _chunk(body, {"content": word if index == 0 else " " + word}, None))
        if chunk_delay_s:
            await asyncio.sleep(chunk_delay_s)
        await self._send_event(writer, _chunk(body, {}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await self._send_event(writer, {**_chunk(body, {}, None), "choices": [], "usage": _usage(body, answer)})
        await _send_chunk(writer, b"data: [DONE]\n\n")
        await _send_chunk(writer, b"")

    async def _send_event(self, writer, event: dict) -> None:
        await _send_chunk(writer, b"data: " + json.dumps(event).encode() + b"\n\n")
        self.chunks_sent += 1

    # faults --------------------------------------------------------------------------------------

    async def _non_json(self, body, writer) -> None:
        await _send_bytes(writer, 200, "text/html", b"<html><body>Bad gateway page</body></html>")

    async def _bad_shape(self, body, writer) -> None:
        await _send_json(writer, 200, {"id": "x", "object": "chat.completion", "result": "no choices here"})

    async def _error_shape(self, body, writer) -> None:
        await _send_json(writer, 500, {"detail": "Internal Server Error", "trace": "at handler.py:12"})

    async def _broken_stream(self, body, writer) -> None:
        answer = "echo: " + _last_user_content(body.get("messages"))
        await self._stream(body, answer + " and more words", writer, 0.0, stop_after=2)

    async def _huge(self, body, writer, declared: bool = False) -> None:
        piece = b" " * (64 * 1024)
        count = HUGE_BYTES // len(piece)
        if declared:
            await _send_head(writer, 200, "application/json", length=HUGE_BYTES)
            for _ in range(count):
                writer.write(piece)
                await writer.drain()
            return None
        await _send_head(writer, 200, "application/json", chunked=True)
        for _ in range(count):
            await _send_chunk(writer, piece)
        await _send_chunk(writer, b"")

    async def _huge_declared(self, body, writer) -> None:
        await self._huge(body, writer, declared=True)

    async def _huge_line(self, body, writer) -> None:
        await _send_head(writer, 200, "text/event-stream", chunked=True)
        await _send_chunk(writer, b"data: " + b"x" * HUGE_LINE_BYTES + b"\n\n")
        await _send_chunk(writer, b"")


FAULTS = {
    "non_json": FakeProvider._non_json,
    "bad_shape": FakeProvider._bad_shape,
    "error_shape": FakeProvider._error_shape,
    "broken_stream": FakeProvider._broken_stream,
    "huge": FakeProvider._huge,
    "huge_declared": FakeProvider._huge_declared,
    "huge_line": FakeProvider._huge_line,
}


# HTTP/1.1 --------------------------------------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], Any]:
    """(method, path, headers, JSON body or None) of one request."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    raw = await reader.readexactly(int(headers.get("content-length", "0")))
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    return method, target.split("?", 1)[0], headers, body


async def _send_head(writer, status: int, content_type: str, *, length: int | None = None, chunked: bool = False,
                     extra: dict[str, str] | None = None) -> None:
    lines = [f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'Status')}", f"Content-Type: {content_type}",
             "Connection: close"]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


async def _send_chunk(writer, data: bytes) -> None:
    """One chunk of a chunked body; b"" is the terminating chunk."""
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _send_bytes(writer, status: int, content_type: str, data: bytes, extra: dict[str, str] | None = None) -> None:
    await _send_head(writer, status, content_type, length=len(data), extra=extra)
    writer.write(data)
    await writer.drain()


async def _send_json(writer, status: int, data: Any, extra: dict[str, str] | None = None) -> None:
    await _send_bytes(writer, status, "application/json", json.dumps(data).encode(), extra)


# OpenAI shapes -----------------------------------------------------------------------------------


def _envelope(message: str, kind: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _last_user_content(messages: Any) -> str:
    users = [m for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content", "") if users else ""
    return content if isinstance(content, str) else json.dumps(content)


def _words(text: str) -> int:
    return len(text.split())


def _usage(body: dict, answer: str) -> dict:
    prompt = sum(_words(m.get("content", "")) for m in body.get("messages") or []
                 if isinstance(m, dict) and isinstance(m.get("content"), str))
    completion = _words(answer)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(body: dict, answer: str) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": _usage(body, answer)}


def _chunk(body: dict, delta: dict, finish_reason: str | None) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
