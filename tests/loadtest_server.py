"""A keep-alive OpenAI-style streaming server for load-test tests: a real HTTP/1.1 server on 127.0.0.1.

tests/provider_server.py answers one request per connection; a load generator must also be seen
reusing connections (its pool is bounded by `clients`), and meeting stream faults that server
lacks. This one keeps connections alive, counts them, and answers POST /v1/chat/completions by a
script of behaviours (one per request, then `default`):

  "ok"            a role chunk, three content chunks, a finish chunk, a usage chunk, [DONE]
  "slow:<s>"      waits <s> seconds, then "ok"
  "hang"          no answer until the client goes away
  "error_event"   200 text/event-stream whose first event is an OpenAI error object
  "no_done"       three content chunks, then the body ends cleanly without [DONE]
  "endless"       small SSE content lines without end (the client must stop reading)
  "redirect"      302 to another address (must not be followed)
  "gzip"          an "ok" stream labelled Content-Encoding: gzip (must be refused, not inflated)
  "<status>"      that status with an OpenAI error envelope
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading

READY_TIMEOUT_S = 10.0
WORDS = ("Paris", " is", " lovely")
COMPLETION_TOKENS = 7  # what the usage chunk claims (deliberately not the chunk count)


class StreamServer:
    def __init__(self, default: str = "ok", chunk_delay_s: float = 0.0):
        self.default = default
        self.chunk_delay_s = chunk_delay_s
        self.port = 0
        self.requests = 0
        self.connections = 0
        self.open_connections = 0
        self.most_open = 0  # the most connections open at once
        self.bodies: list[dict] = []
        self._script: collections.deque[str] = collections.deque()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, behaviours: list[str]) -> None:
        self._script = collections.deque(behaviours)

    def __enter__(self) -> StreamServer:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="stream-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT_S):
            raise RuntimeError("the stream server did not start")
        return self

    def __exit__(self, *exc_info) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(READY_TIMEOUT_S)
        assert not self._thread.is_alive(), "the stream server did not shut down"

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        self.connections += 1
        self.open_connections += 1
        self.most_open = max(self.most_open, self.open_connections)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away: often on purpose (timeouts, bounded reads)
        finally:
            self.open_connections -= 1
            self._tasks.discard(asyncio.current_task())
            writer.close()

    async def _one_request(self, reader, writer) -> bool:
        """Answer one request; False when the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line)
        length = int({k.lower(): v for k, v in headers.items()}.get("content-length", "0"))
        body = json.loads(await reader.readexactly(length)) if length else {}
        self.requests += 1
        self.bodies.append(body)
        name, _, arg = (self._script.popleft() if self._script else self.default).partition(":")
        if name == "slow":
            await asyncio.sleep(float(arg))
            name = "ok"
        if name == "hang":
            await reader.read()  # until the client closes
            return False
        if name.isdigit():
            envelope = json.dumps({"error": {"message": f"status {name}", "type": "test", "code": None}}).encode()
            await _send(writer, int(name), [envelope], "application/json")
            return True
        if name == "redirect":
            await _send(writer, 302, [b""], "text/plain", extra="Location: http://192.0.2.1/v1/chat/completions\r\n")
            return True
        return await self._stream(name, writer)

    async def _stream(self, name: str, writer) -> bool:
        if name == "endless":
            await _head(writer, 200, "text/event-stream")
            event = _event({"choices": [{"index": 0, "delta": {"content": "more "}}]})
            while True:
                await _chunk(writer, event * 64)
        events = [_event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
        if name == "error_event":
            events = [_event({"error": {"message": "the model crashed", "type": "server_error"}})]
        else:
            events += [_event({"choices": [{"index": 0, "delta": {"content": word}}]}) for word in WORDS]
        if name in ("ok", "gzip"):
            events += [_event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
                       _event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": COMPLETION_TOKENS,
                                                        "total_tokens": 3 + COMPLETION_TOKENS}}),
                       b"data: [DONE]\n\n"]
        await _head(writer, 200, "text/event-stream", extra="Content-Encoding: gzip\r\n" if name == "gzip" else "")
        for event in events:
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            await _chunk(writer, event)
        await _chunk(writer, b"")
        return True


def _event(data: dict) -> bytes:
    return b"data: " + json.dumps({"object": "chat.completion.chunk", **data}).encode() + b"\n\n"


async def _head(writer, status: int, content_type: str, extra: str = "") -> None:
    writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n{extra}\r\n"
                 .encode("latin-1"))
    await writer.drain()


async def _chunk(writer, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _send(writer, status: int, parts: list[bytes], content_type: str, extra: str = "") -> None:
    await _head(writer, status, content_type, extra)
    for part in parts:
        if part:
            await _chunk(writer, part)
    await _chunk(writer, b"")
