"""The HTTP front shared by the gateway and a deployment's own ingress: what happens between
the socket and a deployment's `Ingress.respond`.

    - the body is read with a size cap *and* a time limit (a client trickling bytes holds a
      slot for at most `body_timeout_s`, then gets 408);
    - a client that disconnects is status 499 (as nginx logs it) in the log and metrics,
      never a 5xx; and it never reaches canary analysis (see Ingress._dispatch);
    - every request is recorded once: metrics, and a line in the rotating request log;
      unauthenticated attempts (401) only as a counter.

`Ingress.respond` speaks a transport-neutral protocol (a head dict, then SSE events for a
stream), so the same code answers whether the request came through the gateway's handle or
straight from Serve's HTTP proxy. Imported by the cluster only (Starlette, Ray).
"""

import asyncio
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

from ray.exceptions import TaskCancelledError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from . import logs
from .access import FrontError
from .metrics import Metrics
from .openai_api import APIError, sse

CLIENT_CLOSED = 499
STREAM_END = sse("[DONE]")  # every stream's last event


class ClientGone(Exception):
    """The client disconnected before its answer was complete."""


def is_disconnect(exc: BaseException) -> bool:
    # TaskCancelledError covers Serve's RequestCancelledError: a downstream call cancelled
    # because the request that made it was.
    return isinstance(exc, (ClientGone, ClientDisconnect, TaskCancelledError, asyncio.CancelledError))


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, at most `limit` bytes, all of it within `timeout_s`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FrontError(413, f"request body is larger than {limit} bytes", "request_too_large")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise FrontError(413, f"request body is larger than {limit} bytes", "request_too_large")
    except TimeoutError:
        raise FrontError(408, f"the request body did not arrive within {timeout_s:g} s", "request_timeout") from None
    except ClientDisconnect:
        raise ClientGone() from None
    return bytes(body)


# A route: given the request's log entry (it may set "deployment" and "log_path"), the
# items of Ingress.respond: a head {status, entry, headers, body | stream: True}, then events (SSE
# strings, or dicts: {"entry": {...}} with what the log learns only later in a stream, such as a
# provider's usage or a guardrail's action; {"first_token": True} just before the first text).
Route = Callable[[dict[str, Any]], Awaitable[AsyncIterator[Any]]]


class Front:
    """Answers HTTP requests through a Route, recording each one exactly once."""

    def __init__(self) -> None:
        self.metrics = Metrics()

    async def serve(self, endpoint: str, log_path: str | None, route: Route) -> Response:
        started = time.monotonic()
        entry: dict[str, Any] = {"id": uuid.uuid4().hex[:24], "time": time.time(), "deployment": None,
                                 "endpoint": endpoint, "model_version": None, "prompt_tokens": 0,
                                 "completion_tokens": 0, "log_path": log_path}
        streaming = False
        try:
            items = await route(entry)
            head = await anext(items)
            entry.update(head.get("entry") or {}, status=head["status"])
            if head.get("stream"):
                streaming = True
                return StreamingResponse(self._events(items, entry, started), media_type="text/event-stream",
                                         headers=head.get("headers"))
            return JSONResponse(head["body"], status_code=head["status"], headers=head.get("headers"))
        except APIError as exc:
            entry.update(status=exc.status, error=exc.code or exc.message[:200])
            return JSONResponse(exc.body(), status_code=exc.status)
        except asyncio.CancelledError:
            entry.update(status=CLIENT_CLOSED, error="client_closed_request")
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must still answer in the OpenAI envelope
            if is_disconnect(exc):
                entry.update(status=CLIENT_CLOSED, error="client_closed_request")
                return Response(status_code=CLIENT_CLOSED)  # nobody is left to read it
            entry.update(status=500, error=repr(exc)[:200])
            error = APIError(500, f"internal error: {type(exc).__name__}", "server_error")
            return JSONResponse(error.body(), status_code=500)
        finally:
            if not streaming:
                self.record(entry, started)

    async def _events(self, items: AsyncIterator[Any], entry: dict[str, Any], started: float):
        complete = False
        try:
            async for item in items:
                if isinstance(item, dict):  # what the log learns on the way (a provider's usage at the end)
                    entry.update(item.get("entry") or {})
                    if item.get("first_token"):  # the next event carries the answer's first text
                        entry["ttft_ms"] = round((time.monotonic() - started) * 1000, 2)
                    continue
                # Each event leaves as soon as it arrives (a provider's tokens are relayed as they come).
                # A client may hang up as soon as it has [DONE], before this generator runs again:
                # the answer was complete all the same.
                complete = item == STREAM_END
                yield item
        except (GeneratorExit, asyncio.CancelledError):
            raise  # the client left mid-stream and closed this generator: 499 below
        except Exception as exc:  # the server failed mid-stream: a 5xx, never hidden as a hang-up
            entry.update(status=500, error=repr(exc)[:200])
            complete = True
            raise
        finally:
            if not complete:
                entry.update(status=CLIENT_CLOSED, error="client_closed_request")
            self.record(entry, started)

    def refuse(self, endpoint: str, exc: APIError) -> JSONResponse:
        """An answer before any routing (e.g. GET /v1/models), counted like a request."""
        if exc.status == 401:
            self.metrics.observe_unauthenticated(endpoint)
        return JSONResponse(exc.body(), status_code=exc.status)

    def record(self, entry: dict[str, Any], started: float) -> None:
        entry["latency_ms"] = round((time.monotonic() - started) * 1000, 2)
        path = entry.pop("log_path", None)
        status = entry.get("status", 500)
        if status == 401:  # anonymous clients must not be able to grow the log
            self.metrics.observe_unauthenticated(entry["endpoint"])
            return
        self.metrics.observe({**entry, "status": status})
        if path:
            try:
                logs.append(path, entry)
            except OSError:
                pass  # a full disk must not fail the request; /metrics still counts it
