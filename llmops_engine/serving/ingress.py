"""The ingress: the OpenAI-compatible HTTP API in front of the two model slots.

It splits traffic between the slots by the weights in its user_config, records per-slot
outcomes (what canary analysis reads through a handle), and retries a request that
failed on a non-primary slot on the primary one, so a bad canary costs clients nothing.
Auth compares SHA-256 hashes of API keys in constant time; the keys never reach it.

No `from __future__ import annotations` here: FastAPI reads the route methods' annotations
at runtime (a string "Request" would turn into a required query parameter).
"""

import hashlib
import hmac
import random
import re
import time
import uuid
from collections import deque
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import logs
from .config import SLOTS
from .metrics import Metrics
from .openai_api import (
    APIError, ChatRequest, CompletionRequest, chat_response, chat_stream, completion_response,
    completion_stream, validation_message,
)

OUTCOME_HISTORY = 20000


def _pieces(text: str) -> list[str]:
    """Stream pieces: word-sized chunks (generation is batched, so the text is complete)."""
    return re.findall(r"\s*\S+|\s+$", text) or ([text] if text else [])


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
        self.metrics = Metrics()
        self.outcomes: dict[str, deque] = {s: deque(maxlen=OUTCOME_HISTORY) for s in SLOTS}
        self.sequence = 0
        self.config: dict[str, Any] = {}

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.config = config

    # read by the engine through a handle (not HTTP) --------------------------------
    async def routes(self) -> dict[str, Any]:
        return {"primary": self.config.get("primary"), "slots": self.config.get("slots")}

    async def outcomes_since(self, sequence: int) -> dict[str, Any]:
        """Per-slot (seq, ok, latency_ms) of requests after `sequence`, and the latest seq."""
        return {"sequence": self.sequence,
                "slots": {s: [o for o in self.outcomes[s] if o[0] > sequence] for s in SLOTS}}

    # HTTP -----------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        live = self._live_version()
        if live is None:
            raise APIError(503, "no model version is ready", "no_ready_version")
        return {"status": "ok", "deployment": self.config["deployment"], "model_version": live}

    @api.get("/metrics")
    async def metrics(self) -> PlainTextResponse:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        name = self.config["deployment"]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "llmops",
                                            "version": self._live_version()}]}

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return await self._serve(request, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._serve(request, "completions")

    # one request, start to end ------------------------------------------------------
    async def _serve(self, request: Request, endpoint: str):
        rid, started = uuid.uuid4().hex[:24], time.monotonic()
        entry: dict[str, Any] = {"id": rid, "time": time.time(), "deployment": self.config.get("deployment"),
                                 "endpoint": endpoint, "model_version": None, "prompt_tokens": 0, "completion_tokens": 0}
        try:
            self._authorize(request)
            body = await self._read_body(request)
            parsed = self._parse(body, endpoint)
            slot, result = await self._dispatch(self._work(parsed, endpoint))
            gens = result["gens"]
            entry.update(model_version=result["version"], slot=slot,
                         prompt_tokens=sum(g["prompt_tokens"] for g in gens),
                         completion_tokens=sum(g["completion_tokens"] for g in gens),
                         finish_reason=[g["finish_reason"] for g in gens])
            if self.config.get("log_payloads"):
                entry.update(request=body.decode(errors="replace"), completion=[g["text"] for g in gens])
            response = self._respond(rid, parsed, endpoint, gens, result["version"])
            entry["status"] = 200
            return response
        except APIError as exc:
            entry.update(status=exc.status, error=exc.code or exc.message[:200])
            return JSONResponse(exc.body(), status_code=exc.status)
        except Exception as exc:  # noqa: BLE001 - a bug must still answer in the OpenAI envelope
            error = APIError(500, f"internal error: {type(exc).__name__}", "server_error")
            entry.update(status=500, error=repr(exc)[:200])
            return JSONResponse(error.body(), status_code=500)
        finally:
            entry["latency_ms"] = round((time.monotonic() - started) * 1000, 2)
            self._record(entry)

    def _authorize(self, request: Request) -> None:
        hashes = self.config.get("api_key_sha256")
        if hashes is None:
            return  # `auth: none`
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        digest = hashlib.sha256(key.encode()).hexdigest()
        # Compare against every key (no early exit), each in constant time.
        matched = False
        for known in hashes:
            matched |= hmac.compare_digest(digest, known)
        if not key or not matched:
            raise APIError(401, "invalid or missing API key (send it as 'Authorization: Bearer <key>')",
                           "invalid_api_key")

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config["limits"]["max_body_bytes"]
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body is larger than {limit} bytes", "request_too_large")
        body = await request.body()
        if len(body) > limit:
            raise APIError(413, f"request body is larger than {limit} bytes", "request_too_large")
        return body

    def _parse(self, body: bytes, endpoint: str) -> ChatRequest | CompletionRequest:
        model_cls = ChatRequest if endpoint == "chat" else CompletionRequest
        try:
            parsed = model_cls.model_validate_json(body)
        except ValidationError as exc:
            message, param = validation_message(exc)
            raise APIError(400, message, "invalid_request", param) from None
        if parsed.n != 1:
            raise APIError(400, "only n=1 is supported", "unsupported_parameter", "n")
        if parsed.model not in (self.config["deployment"], self._live_version()):
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
            instruction, context = parsed.instruction_and_input()
            items = [{"instruction": instruction, "input": context}]
        else:
            items = [{"prompt": p} for p in parsed.prompts()]
        return {"items": items, "params": params, "stops": parsed.stops(), "live": True}

    async def _dispatch(self, work: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run on a slot picked by weight; on failure of a non-primary slot, retry on the primary."""
        slot = self._pick()
        primary = self.config["primary"]
        for attempt in (slot, primary) if slot != primary else (slot,):
            started = time.monotonic()
            try:
                result = await self.handles[attempt].generate.remote(work)
                expected = self.config["slots"][attempt]["version"]
                if result["version"] != expected:  # the slot was swapped under us: not ready for this route
                    raise RuntimeError(f"slot {attempt} serves {result['version']}, expected {expected}")
            except Exception as exc:  # noqa: BLE001 - any replica failure counts against its version
                self._outcome(attempt, False, time.monotonic() - started)
                failure = exc
                continue
            self._outcome(attempt, True, time.monotonic() - started)
            if "error" in result:
                e = result["error"]
                raise APIError(e["status"], e["message"], e["code"], e.get("param"))
            return attempt, result
        raise APIError(500, f"model replica failed: {type(failure).__name__}", "server_error")

    def _pick(self) -> str:
        slots = self.config.get("slots") or {}
        ready = [(s, v["weight"]) for s, v in slots.items() if v.get("weight", 0) > 0 and v.get("version")]
        if not ready:
            raise APIError(503, "no model version is ready to serve", "no_ready_version")
        names, weights = zip(*ready)
        return random.choices(names, weights=weights)[0]

    def _respond(self, rid: str, parsed, endpoint: str, gens: list[dict[str, Any]], version: str):
        model, headers = parsed.model, {"x-request-id": rid, "x-model-version": version}
        if not parsed.stream:
            body = chat_response(rid, model, gens[0]) if endpoint == "chat" else completion_response(rid, model, gens)
            return JSONResponse(body, headers=headers)
        if endpoint == "chat":
            events = chat_stream(rid, model, gens[0], parsed.include_usage(), _pieces(gens[0]["text"]))
        else:
            events = completion_stream(rid, model, gens, parsed.include_usage(), [_pieces(g["text"]) for g in gens])

        async def emit():
            for event in events:
                yield event

        return StreamingResponse(emit(), media_type="text/event-stream", headers=headers)

    def _outcome(self, slot: str, ok: bool, latency_s: float) -> None:
        self.sequence += 1
        self.outcomes[slot].append((self.sequence, ok, round(latency_s * 1000, 2)))

    def _record(self, entry: dict[str, Any]) -> None:
        self.metrics.observe(entry["deployment"] or "", entry.get("model_version") or "", entry["endpoint"],
                             entry.get("status", 500), entry["latency_ms"] / 1000,
                             entry["prompt_tokens"], entry["completion_tokens"])
        path = self.config.get("log_path")
        if path:
            try:
                logs.append(path, entry)
            except OSError:
                pass  # a full disk must not fail the request; /metrics still counts it

    def _live_version(self) -> str | None:
        slots, primary = self.config.get("slots") or {}, self.config.get("primary")
        return (slots.get(primary) or {}).get("version")
