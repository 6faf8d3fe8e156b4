"""The ingress of one Deployment: the OpenAI API in front of its two model slots.

It splits traffic between the slots by the weights in its user_config, records per-slot
outcomes (what canary analysis reads through a handle), and retries a request that
failed on a non-primary slot on the primary one, so a bad canary costs clients nothing.
Only failures of the version count against it: a request's own 4xx and a client that
went away are no evidence about the model.

`respond` is the request path, transport-neutral: the project's gateway calls it through a
streaming handle; when the spec sets an explicit `route_prefix`, this app also answers HTTP
itself with the same HTTP front as the gateway (front.py). Auth compares SHA-256 hashes of
API keys in constant time; the keys never reach it.

No `from __future__ import annotations` here: FastAPI reads the route methods' annotations
at runtime (a string "Request" would turn into a required query parameter).
"""

import asyncio
import random
import time
from collections import deque
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import TaskCancelledError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .access import MISSING_KEY, FrontError, bearer_key, key_matches
from .config import SLOTS
from .front import CLIENT_CLOSED, ClientGone, Front, read_body
from .guarding import GuardrailBlocked, compile_policy, guard_answers, guard_request, stream_guard
from .openai_api import (
    APIError, ChatRequest, CompletionRelay, CompletionRequest, RelayedStream, chat_response, completion_response,
    validation_message,
)

OUTCOME_HISTORY = 20000
ANSWERED_BY = "x-llmops-answered-by"


class CanaryFailed(Exception):
    """A non-primary slot failed a stream before sending anything: the primary answers it."""


def _payloads(parsed: ChatRequest | CompletionRequest, body: bytes, guarded: list, answers: list[str]) -> dict[str, Any]:
    """What `log_payloads` logs: the request as the model saw it and the answers as the client got them
    (masked where a guardrail masked)."""
    request = parsed.model_dump_json(exclude_unset=True) if guarded else body.decode(errors="replace")
    return {"request": request, "completion": answers}


api = FastAPI(title="llmops", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(APIError(exc.status_code, str(exc.detail), None).body(), status_code=exc.status_code)


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, blue, green) -> None:
        self.handles = {SLOTS[0]: blue, SLOTS[1]: green}
        self.front = Front()
        self.outcomes: dict[str, deque] = {s: deque(maxlen=OUTCOME_HISTORY) for s in SLOTS}
        self.sequence = 0
        self.config: dict[str, Any] = {}
        self.policy = None  # the guardrails' compiled policy (guarding.py), None without guardrails

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.policy = compile_policy(config.get("guardrails"))
        self.config = config

    # read by the engine and the gateway through a handle (not HTTP) -----------------
    async def routes(self) -> dict[str, Any]:
        return {"primary": self.config.get("primary"), "slots": self.config.get("slots")}

    async def outcomes_since(self, sequence: int) -> dict[str, Any]:
        """Per-slot (seq, ok, latency_ms) of requests after `sequence`, and the latest seq."""
        return {"sequence": self.sequence,
                "slots": {s: [o for o in self.outcomes[s] if o[0] > sequence] for s in SLOTS}}

    async def answer(self, endpoint: str, body: bytes, rid: str, routed: bool) -> list[Any]:
        """`respond`'s items in one piece, for a request that does not stream (the gateway's unary call)."""
        return [item async for item in self.respond(endpoint, body, rid, routed)]

    async def respond(self, endpoint: str, body: bytes, rid: str, routed: bool) -> AsyncIterator[Any]:
        """One request: yields a head {status, entry, headers, body | stream: True}, then the
        SSE events of a stream. `routed`: the gateway already chose this deployment by `model`."""
        policy, guarded = self.policy, []  # the policy this request started with; what acted
        try:
            parsed = self._parse(body, endpoint, check_model=not routed)
            guarded += guard_request(policy, parsed)
            work, slot = self._work(parsed, endpoint), self._pick()
            if parsed.stream:
                try:
                    async for item in self._relay(slot, work, parsed, body, rid, policy, guarded):
                        yield item
                    return
                except CanaryFailed:
                    slot = self.config["primary"]  # nothing was sent yet: the stable version answers
                async for item in self._relay(slot, work, parsed, body, rid, policy, guarded):
                    yield item
                return
            slot, result = await self._dispatch(work, slot)
            guarded += result.get("guardrails") or []  # retrieved chunks the input checks acted on
            gens = guard_answers(policy, result["gens"], guarded)
        except GuardrailBlocked as exc:
            yield {"status": exc.status, "body": exc.body(),
                   "entry": {"error": exc.code, "guardrails": exc.findings, **exc.tokens}}
            return
        except APIError as exc:
            yield {"status": exc.status, "body": exc.body(), "entry": {"error": exc.code or exc.message[:200]}}
            return
        except ClientGone:
            yield {"status": CLIENT_CLOSED, "body": None, "entry": {"error": "client_closed_request"}}
            return
        version = result["version"]
        entry = {"deployment": self.config.get("deployment"), "model_version": version, "slot": slot,
                 "prompt_tokens": sum(g["prompt_tokens"] for g in gens),
                 "completion_tokens": sum(g["completion_tokens"] for g in gens),
                 "finish_reason": [g["finish_reason"] for g in gens],
                 **({"guardrails": guarded} if guarded else {}),
                 **({"retrieval_ms": result["retrieval_ms"]} if "retrieval_ms" in result else {})}
        sources, answered_by = result.get("sources"), result.get("answered_by")
        if sources is not None:  # ids only: the documents' text never reaches the log
            entry["sources"] = [s["id"] for s in sources]
        if self.config.get("log_payloads"):
            entry.update(_payloads(parsed, body, guarded, [g["text"] for g in gens]))
        model, headers = parsed.model, {"x-request-id": rid, "x-model-version": version}
        if answered_by:  # a provider version: which model of its chain answered
            entry["answered_by"] = headers[ANSWERED_BY] = answered_by
        answer = chat_response(rid, model, gens[0], sources) if endpoint == "chat" else completion_response(rid, model, gens)
        yield {"status": 200, "headers": headers, "body": {**answer, **({"answered_by": answered_by} if answered_by else {})},
               "entry": entry}

    # HTTP, when the spec sets an explicit route_prefix ------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        live = self._live_version()
        if live is None:
            raise APIError(503, "no model version is ready", "no_ready_version")
        return {"status": "ok", "deployment": self.config["deployment"], "model_version": live}

    @api.get("/metrics")
    async def metrics(self) -> PlainTextResponse:
        return PlainTextResponse(self.front.metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/v1/models")
    async def models(self, request: Request):
        try:
            self._authorize(request)
        except APIError as exc:
            return self.front.refuse("models", exc)
        name = self.config["deployment"]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "llmops",
                                            "version": self._live_version()}]}

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return await self._serve_http(request, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._serve_http(request, "completions")

    async def _serve_http(self, request: Request, endpoint: str):
        async def route(entry: dict[str, Any]):
            entry["deployment"] = self.config.get("deployment")
            self._authorize(request)
            limits = self.config["limits"]
            body = await read_body(request, limits["max_body_bytes"], limits["body_timeout_s"])
            return self.respond(endpoint, body, entry["id"], routed=False)

        return await self.front.serve(endpoint, self.config.get("log_path"), route)

    # one request, start to end ------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        hashes = self.config.get("api_key_sha256")
        if hashes is None:
            return  # `auth: none`
        if not key_matches(bearer_key(request.headers.get("authorization", "")), hashes):
            raise FrontError(401, MISSING_KEY, "invalid_api_key")

    def _parse(self, body: bytes, endpoint: str, check_model: bool) -> ChatRequest | CompletionRequest:
        model_cls = ChatRequest if endpoint == "chat" else CompletionRequest
        try:
            parsed = model_cls.model_validate_json(body)
        except ValidationError as exc:
            message, param = validation_message(exc)
            raise APIError(400, message, "invalid_request", param) from None
        if parsed.n != 1:
            raise APIError(400, "only n=1 is supported", "unsupported_parameter", "n")
        if check_model and parsed.model not in (self.config["deployment"], self._live_version()):
            raise APIError(404, f"model '{parsed.model}' does not exist; use '{self.config['deployment']}'",
                           "model_not_found", "model")
        return parsed

    def _work(self, parsed: ChatRequest | CompletionRequest, endpoint: str) -> dict[str, Any]:
        cap = self.config["limits"]["max_new_tokens"]
        requested = parsed.requested_tokens()
        temperature = parsed.temperature or 0.0
        params = {"max_new_tokens": min(requested or cap, cap), "do_sample": temperature > 0,
                  "temperature": temperature or 1.0, "top_p": parsed.top_p or 1.0, "seed": parsed.seed or 0}
        if endpoint == "chat":
            items = [parsed.chat_item()]
        else:
            items = [{"prompt": p} for p in parsed.prompts()]
        return {"items": items, "params": params, "stops": parsed.stops(), "live": True}

    async def _relay(self, slot: str, work: dict[str, Any], parsed: ChatRequest | CompletionRequest, body: bytes, rid: str,
                     policy,
                     guarded: list[dict[str, Any]]) -> AsyncIterator[Any]:
        """A stream, relayed chunk by chunk as the slot sends them — a provider's chunks as they
        arrive, a local model's tokens as its engine makes them (RelayedStream in openai_api.py; the
        output checks see each chunk before it leaves) — then the usage and what the guardrails did
        into the log entry.
        A canary that fails before its first chunk raises CanaryFailed (the primary answers instead, as
        `_dispatch` does for a whole answer); once a chunk was relayed, nothing is retried."""
        started, version = time.monotonic(), self.config["slots"][slot]["version"]
        items = self.handles[slot].options(stream=True).stream.remote(work)
        try:
            first = await anext(items)
        except TaskCancelledError as exc:
            raise ClientGone() from exc
        except Exception as exc:  # noqa: BLE001 - the replica failed: counts against its version
            first = {"error": {"status": 500, "code": "server_error", "message": f"model replica failed: {type(exc).__name__}"}}
        if "head" in first and first["head"]["version"] != version:  # the slot was swapped under us
            first = {"error": {"status": 500, "code": "server_error", "message": "model replica failed: version changed"}}
        if "error" in first:
            error = first["error"]
            if error["status"] >= 500:  # the request's own 4xx is no evidence about the version
                self._outcome(slot, False, time.monotonic() - started)
                if slot != self.config["primary"]:
                    raise CanaryFailed()
            raise APIError(error["status"], error["message"], error["code"], error.get("param"))
        head = first["head"]
        sources, answered_by = head.get("sources"), head["answered_by"]
        guarded += head.get("guardrails") or []
        entry = {"deployment": self.config.get("deployment"), "model_version": version, "slot": slot,
                 **({"sources": [s["id"] for s in sources]} if sources is not None else {}),
                 **({"retrieval_ms": head["retrieval_ms"]} if "retrieval_ms" in head else {})}
        headers = {"x-request-id": rid, "x-model-version": version}
        if answered_by:  # a provider version: which model of its chain answered
            entry["answered_by"] = headers[ANSWERED_BY] = answered_by
        yield {"status": 200, "headers": headers, "stream": True, "entry": entry}
        if isinstance(parsed, ChatRequest):
            relay = RelayedStream(rid, parsed.model, parsed.include_usage(), sources, answered_by, stream_guard(policy))
        else:
            relay = CompletionRelay(rid, parsed.model, parsed.include_usage(), [stream_guard(policy) for _ in work["items"]])
        try:
            async for item in items:
                events = relay.events(item)
                if events and relay.first_text:
                    yield {"first_token": True}
                for event in events:
                    yield event
                if relay.blocked:  # the answer is cut here: the slot stops reading the provider
                    items.cancel()
                    break
        except (GeneratorExit, asyncio.CancelledError):
            raise  # the client left mid-stream: no evidence about the version
        except Exception:
            self._outcome(slot, False, time.monotonic() - started)
            raise
        self._outcome(slot, not relay.failed or relay.blocked, time.monotonic() - started)
        findings = guarded + relay.findings
        payloads = _payloads(parsed, body, findings, relay.texts()) if self.config.get("log_payloads") else {}
        yield {"entry": {**relay.totals(), **({"guardrails": findings} if findings else {}), **payloads}}
        for event in relay.close():
            yield event

    async def _dispatch(self, work: dict[str, Any], slot: str) -> tuple[str, dict[str, Any]]:
        """Run on `slot` (picked by weight); on failure of a non-primary slot, retry on the primary.
        A cancelled request (the client left) is not retried and counts for no version."""
        primary = self.config["primary"]
        failure, last_error = "no attempt", None
        for attempt in (slot, primary) if slot != primary else (slot,):
            started = time.monotonic()
            try:
                result = await self.handles[attempt].generate.remote(work)
            except TaskCancelledError as exc:
                raise ClientGone() from exc
            except Exception as exc:  # noqa: BLE001 - any replica failure counts against its version
                self._outcome(attempt, False, time.monotonic() - started)
                failure, last_error = type(exc).__name__, None
                continue
            error = result.get("error")
            if error and error["status"] < 500:
                raise APIError(error["status"], error["message"], error["code"], error.get("param"))
            expected = self.config["slots"][attempt]["version"]
            if error or result["version"] != expected:  # a 5xx, or the slot was swapped under us
                self._outcome(attempt, False, time.monotonic() - started)
                failure = f"slot {attempt} answered {error['code'] if error else 'version ' + result['version']}"
                last_error = error
                continue
            self._outcome(attempt, True, time.monotonic() - started)
            return attempt, result
        if last_error:  # e.g. a provider and its fallbacks all failed: 502 with the provider's code
            raise APIError(last_error["status"], last_error["message"], last_error["code"], last_error.get("param"))
        raise APIError(500, f"model replica failed: {failure}", "server_error")

    def _pick(self) -> str:
        slots = self.config.get("slots") or {}
        ready = [(s, v["weight"]) for s, v in slots.items() if v.get("weight", 0) > 0 and v.get("version")]
        if not ready:
            raise APIError(503, "no model version is ready to serve", "no_ready_version")
        names, weights = zip(*ready)
        return random.choices(names, weights=weights)[0]

    def _outcome(self, slot: str, ok: bool, latency_s: float) -> None:
        self.sequence += 1
        self.outcomes[slot].append((self.sequence, ok, round(latency_s * 1000, 2)))

    def _live_version(self) -> str | None:
        slots, primary = self.config.get("slots") or {}, self.config.get("primary")
        return (slots.get(primary) or {}).get("version")
