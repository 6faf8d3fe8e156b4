"""The project's gateway: one base URL for every Deployment, `model` selects the deployment.

    client ──HTTP──► gateway ──handle──► <deployment A>/ingress ──► blue / green
                     auth, body,  └─handle──► <deployment B>/ingress ──► blue / green
                     routing, log, metrics

As in every OpenAI-compatible multi-model server, `GET /v1/models` lists what the caller's
key may use, and `model` in the body picks the deployment (its name or a model id it
advertises). The gateway holds only SHA-256 hashes of each deployment's keys (its
user_config, rewritten on every Deployment apply and delete), so a key of deployment A
never opens deployment B. It forwards the raw body to the chosen ingress: to `respond` through a
streaming handle when the request streams, to `answer` (the same, in one unary call) when it does
not; per-slot routing and canary bookkeeping stay in that ingress.

No `from __future__ import annotations` (FastAPI reads annotations at runtime).
"""

import asyncio
import json
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from .access import FrontError, access_of, require_some, select
from .config import INGRESS
from .front import Front, read_body
from .openai_api import APIError

ROUTES_TIMEOUT_S = 5

api = FastAPI(title="llmops gateway", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(APIError(exc.status_code, str(exc.detail), None).body(), status_code=exc.status_code)


def requested_model(body: bytes) -> tuple[str, bool]:
    """`model`, and whether the request streams; the ingress validates the rest."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: a body of 60 k nested brackets
        raise FrontError(400, "the request body is not valid JSON", "invalid_json") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, str) or not model:
        raise FrontError(400, "`model` is required: the name of a deployment (see GET /v1/models)",
                         "invalid_request", "model")
    # Anything but absent or false may stream (the ingress parses booleans leniently, e.g. "true").
    return model, data.get("stream") not in (None, False)


async def _replay(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


@serve.deployment
@serve.ingress(api)
class Gateway:
    def __init__(self) -> None:
        self.front = Front()
        self.deployments: dict[str, dict[str, Any]] = {}
        self.log_path: str | None = None
        self.ingresses: dict[str, Any] = {}

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.deployments = config.get("deployments") or {}
        self.log_path = config.get("log_path")
        apps = {entry["app"] for entry in self.deployments.values()}
        self.ingresses = {app: handle for app, handle in self.ingresses.items() if app in apps}

    async def entries(self) -> dict[str, Any]:
        """Read by the engine through a handle: proof that the new routes are live."""
        return self.deployments

    # HTTP -------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok"}

    @api.get("/metrics")
    async def metrics(self) -> PlainTextResponse:
        return PlainTextResponse(self.front.metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/v1/models")
    async def models(self, request: Request):
        access = access_of(self.deployments, request.headers.get("authorization", ""))
        try:
            require_some(access)
        except APIError as exc:
            return self.front.refuse("models", exc)
        versions = await asyncio.gather(*(self._live_version(name) for name in access.names))
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "llmops", "version": version}
            for name, version in zip(access.names, versions)]}

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return await self._forward(request, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._forward(request, "completions")

    async def _forward(self, request: Request, endpoint: str):
        async def route(entry: dict[str, Any]):
            access = access_of(self.deployments, request.headers.get("authorization", ""))
            require_some(access)  # before reading a byte of the body
            mine = [self.deployments[name] for name in access.names]
            body = await read_body(request, max(e["max_body_bytes"] for e in mine),
                                   max(e["body_timeout_s"] for e in mine))
            model, streams = requested_model(body)
            name = select(self.deployments, access, model)
            target = self.deployments[name]
            entry.update(deployment=name, log_path=target["log_path"])
            if len(body) > target["max_body_bytes"]:
                raise FrontError(413, f"request body is larger than {target['max_body_bytes']} bytes",
                                 "request_too_large")
            ingress = self._ingress(target["app"])
            if streams:
                return ingress.options(stream=True).respond.remote(endpoint, body, entry["id"], True)
            # A whole answer in one unary call: a streaming handle costs more per request.
            return _replay(await ingress.answer.remote(endpoint, body, entry["id"], True))

        return await self.front.serve(endpoint, self.log_path, route)

    def _ingress(self, app: str):
        if app not in self.ingresses:
            self.ingresses[app] = serve.get_deployment_handle(INGRESS, app_name=app)
        return self.ingresses[app]

    async def _live_version(self, name: str) -> str | None:
        try:
            routes = await asyncio.wait_for(self._ingress(self.deployments[name]["app"]).routes.remote(),
                                            ROUTES_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a deployment restarting is listed without a version
            return None
        return ((routes.get("slots") or {}).get(routes.get("primary")) or {}).get("version")
