"""Gateway overhead of a provider deployment: p50/p95 of a chat request through the project's
gateway (a `model: provider:up/m` Deployment relaying to an upstream) minus the same request sent
straight to that upstream, at 1 and 16 concurrent clients (target: p50 overhead ≤ 5 ms).

    python bench/provider_bench.py [--requests 200] [--clients 1,16] [--max-tokens 8] [--port N]
        [--stream-gap-ms 0] [--no-breakdown]

The upstream is a minimal keep-alive OpenAI-compatible server (Starlette + uvicorn, its own
process on 127.0.0.1) that answers a fixed chat completion at once, streamed when asked. The bench
writes a temporary project (a Provider pointing at it, a Prompt, a prompt-only Deployment with our
own API key and `route_prefix: /relay-own`), applies it through the real Engine on a fresh local
Ray head of that project (RAY_ADDRESS is ignored), and then measures, with httpx keep-alive
clients, the two paths side by side in alternating rounds. Then, at 1 client: time to the first
streamed chunk, and where the time goes, hop by hop (the Deployment's own route skips the gateway;
driver handles skip Serve's HTTP proxy; GET /healthz is the proxy and the gateway alone).
At the end it undeploys and stops the head it started (and only it), and the upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

import httpx

APP = "relay"
OWN_ROUTE = "/relay-own"
UPSTREAM_MODEL = "m-upstream"
KEYS_ENV, UPSTREAM_KEY_ENV = "LLMOPS_BENCH_RELAY_KEYS", "LLMOPS_BENCH_UPSTREAM_KEY"
MESSAGES = [{"role": "user", "content": "How do I reset my password?"}]
ANSWER_WORDS = ["Open", " Settings,", " then", " Security,", " then", " Reset."]
TARGET_P50_MS = 5.0

SPECS = {
    "prompt.yaml": """\
apiVersion: llmops/v1
kind: Prompt
metadata: {name: brief}
spec:
  system: Answer briefly.
  template: "Question: {instruction}"
""",
    "provider.yaml": """\
apiVersion: llmops/v1
kind: Provider
metadata: {name: up}
spec:
  type: openai-compatible
  base_url: %(base_url)s
  api_key_env: %(key_env)s
  models: {m: %(model)s}
  timeout_s: 10
  max_retries: 0
""",
    "deployment.yaml": """\
apiVersion: llmops/v1
kind: Deployment
metadata: {name: %(app)s}
spec:
  model: provider:up/m
  prompt: brief
  gate: null
  auth: {api_keys_env: %(keys_env)s}
  limits: {max_new_tokens: %(max_tokens)d}
  route_prefix: %(own_route)s
""",
}


# the upstream ------------------------------------------------------------------------------------

def _completion() -> bytes:
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": UPSTREAM_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(ANSWER_WORDS)},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": len(ANSWER_WORDS), "total_tokens": 9 + len(ANSWER_WORDS)},
    }).encode()


def _stream_events(include_usage: bool) -> list[bytes]:
    def chunk(delta: dict, finish: str | None) -> dict:
        return {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": UPSTREAM_MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""}, None)]
    chunks += [chunk({"content": word}, None) for word in ANSWER_WORDS]
    chunks.append(chunk({}, "stop"))
    if include_usage:
        chunks.append({**chunk({}, None), "choices": [],
                       "usage": {"prompt_tokens": 9, "completion_tokens": len(ANSWER_WORDS),
                                 "total_tokens": 9 + len(ANSWER_WORDS)}})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def serve_upstream(port: int, key: str, chunk_gap_s: float) -> None:
    """The upstream process: answers at once (a stream's chunks `chunk_gap_s` apart), keeps
    connections alive (as hosted APIs do)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    completion, authorization = _completion(), f"Bearer {key}"

    def refused(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": None}}, status)

    async def chat(request):
        if request.headers.get("authorization") != authorization:
            return refused(401, "invalid api key")
        body = await request.json()
        if body.get("model") != UPSTREAM_MODEL:
            return refused(404, f"model {body.get('model')!r} not found")
        if body.get("stream"):
            events = _stream_events(bool((body.get("stream_options") or {}).get("include_usage")))

            async def send():
                for event in events:
                    yield event
                    if chunk_gap_s:
                        await asyncio.sleep(chunk_gap_s)
            return StreamingResponse(send(), media_type="text/event-stream")
        return Response(completion, media_type="application/json")

    async def models(request):
        if request.headers.get("authorization") != authorization:
            return refused(401, "invalid api key")
        return JSONResponse({"object": "list", "data": [{"id": UPSTREAM_MODEL, "object": "model", "owned_by": "bench"}]})

    async def healthz(request):
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/v1/models", models), Route("/healthz", healthz)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_port() -> int:
    """A free port for Serve's HTTP proxy, below the kernel's ephemeral range and above Ray's worker
    ports (10002-19999): the head starting next binds dozens of ephemeral ports, one of which
    could otherwise be the one picked here (the proxy then fails to bind)."""
    import random

    for port in random.sample(range(20000, 32768), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def start_upstream(key: str, chunk_gap_s: float) -> tuple[multiprocessing.Process, str]:
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(target=serve_upstream, args=(port, key, chunk_gap_s), daemon=True)
    process.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"the bench upstream did not answer on 127.0.0.1:{port} within 30 s")


# measuring ---------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Target:
    """One way to send the bench's chat request: a URL, the key it takes and the model it names."""

    def __init__(self, label: str, url: str, key: str, model: str):
        self.label, self.url, self.key, self.model = label, url, key, model

    def body(self, max_tokens: int, stream: bool = False) -> dict:
        return {"model": self.model, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0,
                **({"stream": True, "stream_options": {"include_usage": True}} if stream else {})}


async def closed_loop(one: Callable[[httpx.AsyncClient], Awaitable[float]], clients: int, requests: int,
                      client: httpx.AsyncClient) -> tuple[list[float], float]:
    """`requests` calls of `one` from `clients` concurrent workers; (latencies in s, wall s)."""
    remaining, latencies = iter(range(requests)), []

    async def worker() -> None:
        for _ in remaining:
            latencies.append(await one(client))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, time.perf_counter() - started


def post_once(path: Target, max_tokens: int) -> Callable[[httpx.AsyncClient], Awaitable[float]]:
    headers, body = {"Authorization": f"Bearer {path.key}"}, path.body(max_tokens)

    async def one(client: httpx.AsyncClient) -> float:
        started = time.perf_counter()
        response = await client.post(path.url, json=body, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"{path.label}: HTTP {response.status_code}: {response.text[:300]}")
        return elapsed

    return one


def first_chunk_once(path: Target, max_tokens: int) -> Callable[[httpx.AsyncClient], Awaitable[float]]:
    """Time to the first `data: {` line of a streamed request (the stream is then read to its end)."""
    headers, body = {"Authorization": f"Bearer {path.key}"}, path.body(max_tokens, stream=True)

    async def one(client: httpx.AsyncClient) -> float:
        started, first = time.perf_counter(), None
        async with client.stream("POST", path.url, json=body, headers=headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{path.label} (stream): HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if first is None and line.startswith("data: {"):
                    first = time.perf_counter() - started
        if first is None:
            raise RuntimeError(f"{path.label} (stream): no chunk arrived")
        return first

    return one


def get_once(url: str) -> Callable[[httpx.AsyncClient], Awaitable[float]]:
    async def one(client: httpx.AsyncClient) -> float:
        started = time.perf_counter()
        (await client.get(url)).raise_for_status()
        return time.perf_counter() - started

    return one


async def side_by_side(ones: dict[str, Callable], clients: int, requests: int, rounds: int = 2) -> dict[str, dict]:
    """Each way measured `requests` times, in alternating rounds (so both see the same machine
    state), after a warm-up; {label: {p50_ms, p95_ms, rps}}."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    results: dict[str, tuple[list[float], float]] = {label: ([], 0.0) for label in ones}
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for one in ones.values():
            await closed_loop(one, clients, max(clients * 2, 10), client)  # warm connections and replicas
        for _ in range(rounds):
            for label, one in ones.items():
                latencies, wall = await closed_loop(one, clients, requests // rounds, client)
                results[label] = (results[label][0] + latencies, results[label][1] + wall)
    return {label: {"p50_ms": percentile(lat, 0.5) * 1000, "p95_ms": percentile(lat, 0.95) * 1000,
                    "rps": len(lat) / wall} for label, (lat, wall) in results.items()}


def timed_calls(call: Callable[[], object], requests: int) -> dict:
    """A driver-side call (a Serve handle), sequentially: {p50_ms, p95_ms, rps}."""
    for _ in range(10):
        call()
    latencies, started = [], time.perf_counter()
    for _ in range(requests):
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return {"p50_ms": percentile(latencies, 0.5) * 1000, "p95_ms": percentile(latencies, 0.95) * 1000,
            "rps": requests / (time.perf_counter() - started)}


def row(label: str, stats: dict, note: str = "") -> None:
    print(f"  {label:<44} p50 {stats['p50_ms']:7.2f} ms   p95 {stats['p95_ms']:7.2f} ms   "
          f"{stats['rps']:7.1f} req/s   {note}", flush=True)


# the project -------------------------------------------------------------------------------------

def write_project(root: Path, upstream_url: str, max_tokens: int) -> None:
    (root / "specs").mkdir(parents=True)
    (root / "llmops.yaml").write_text("spec_dirs: [specs]\n")
    values = {"base_url": f"{upstream_url}/v1", "key_env": UPSTREAM_KEY_ENV, "model": UPSTREAM_MODEL, "app": APP,
              "keys_env": KEYS_ENV, "max_tokens": max_tokens, "own_route": OWN_ROUTE}
    for name, text in SPECS.items():
        (root / "specs" / name).write_text(text % values)


def driver_handles(max_tokens: int) -> dict[str, Callable[[], object]]:
    """Calls that skip Serve's HTTP proxy: the ingress's `respond` as the gateway makes it, and the
    primary slot's `generate` as the ingress makes it (the request the ingress would build)."""
    from ray import serve

    from llmops_engine.serving.config import INGRESS
    from llmops_engine.serving.openai_api import ChatRequest

    ingress = serve.get_deployment_handle(INGRESS, app_name=APP)
    primary = ingress.routes.remote().result(timeout_s=30)["primary"]
    slot = serve.get_deployment_handle(primary, app_name=APP)
    body = json.dumps({"model": APP, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0}).encode()
    work = {"items": [ChatRequest.model_validate_json(body).chat_item()], "stops": [], "live": True,
            "params": {"max_new_tokens": max_tokens, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0}}

    def via_ingress() -> object:
        items = list(ingress.options(stream=True).respond.remote("chat", body, "bench", True))
        if items[0]["status"] != 200:
            raise RuntimeError(f"ingress handle: {items[0]}")
        return items

    def via_slot() -> object:
        result = slot.generate.remote(work).result(timeout_s=60)
        if result.get("error"):
            raise RuntimeError(f"slot handle: {result['error']}")
        return result

    return {"driver -> ingress.respond -> slot -> upstream": via_ingress,
            "driver -> slot.generate -> upstream": via_slot}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per path and client count")
    parser.add_argument("--clients", default="1,16", help="concurrent client counts, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--port", type=int, default=None, help="Serve HTTP port (default: a free one)")
    parser.add_argument("--stream-gap-ms", type=float, default=0.0,
                        help="the upstream's pause between stream chunks (a real model's time per token)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the hop-by-hop timings")
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]

    from llmops_engine import raycluster
    from llmops_engine.engine import Engine
    from llmops_engine.project import Project, ServeSettings, load_project
    from llmops_engine.serving.deploy import undeploy

    os.environ.pop("RAY_ADDRESS", None)  # a head of the bench's own project, never someone else's cluster
    upstream_key, relay_key = "sk-up-" + secrets.token_hex(12), "sk-relay-" + secrets.token_hex(12)
    os.environ[UPSTREAM_KEY_ENV], os.environ[KEYS_ENV] = upstream_key, relay_key
    upstream, upstream_url = start_upstream(upstream_key, args.stream_gap_ms / 1000)
    root = Path(tempfile.mkdtemp(prefix="provider-bench-"))
    project = None
    try:
        write_project(root, upstream_url, args.max_tokens)
        loaded = load_project(root)
        project = Project(root, loaded.settings.model_copy(update={"serve": ServeSettings(port=args.port or serve_port())}))
        began = time.monotonic()
        result = Engine(project, report=lambda line: None).apply()
        if result.exit_code() != 0:
            for step in result.steps:
                print(f"{step.key}: {step.status} {step.error or ''}", file=sys.stderr)
            return 1
        print(f"applied (Provider, Prompt, Deployment '{APP}') on a fresh local head in {time.monotonic() - began:.0f} s; "
              f"{args.requests} requests per path and setting, max_tokens {args.max_tokens}", flush=True)

        serve_url = f"http://127.0.0.1:{project.settings.serve.port}"
        direct = Target("direct to the upstream", f"{upstream_url}/v1/chat/completions", upstream_key, UPSTREAM_MODEL)
        gateway = Target("through the gateway", f"{serve_url}/v1/chat/completions", relay_key, APP)
        verdicts = []
        for clients in client_counts:
            stats = asyncio.run(side_by_side({p.label: post_once(p, args.max_tokens) for p in (direct, gateway)},
                                             clients, args.requests))
            print(f"{clients} client(s), non-streaming:", flush=True)
            for label, values in stats.items():
                row(label, values)
            p50 = stats[gateway.label]["p50_ms"] - stats[direct.label]["p50_ms"]
            p95 = stats[gateway.label]["p95_ms"] - stats[direct.label]["p95_ms"]
            print(f"  overhead (through - direct): p50 {p50:+.2f} ms, p95 {p95:+.2f} ms", flush=True)
            verdicts.append(f"{clients} client(s) {p50:.2f} ms {'met' if p50 <= TARGET_P50_MS else 'NOT met'}")
        print(f"target p50 overhead <= {TARGET_P50_MS:g} ms: " + "; ".join(verdicts), flush=True)

        streamed = asyncio.run(side_by_side({p.label: first_chunk_once(p, args.max_tokens) for p in (direct, gateway)},
                                            1, args.requests))
        print(f"1 client, streaming (upstream chunks {args.stream_gap_ms:g} ms apart), time to the first chunk:", flush=True)
        for label, values in streamed.items():
            row(label, values)
        print(f"  overhead (through - direct): p50 "
              f"{streamed[gateway.label]['p50_ms'] - streamed[direct.label]['p50_ms']:+.2f} ms", flush=True)

        if not args.no_breakdown:
            own = Target(f"proxy -> ingress ({OWN_ROUTE}) -> slot -> upstream", f"{serve_url}{OWN_ROUTE}/v1/chat/completions",
                        relay_key, APP)
            hops = asyncio.run(side_by_side({
                "direct to the upstream": post_once(direct, args.max_tokens),
                "proxy -> gateway -> ingress -> slot -> upstream": post_once(gateway, args.max_tokens),
                own.label: post_once(own, args.max_tokens),
                "GET upstream /healthz": get_once(f"{upstream_url}/healthz"),
                "GET gateway /healthz (proxy -> gateway)": get_once(f"{serve_url}/healthz"),
            }, 1, args.requests))
            hops.update({label: timed_calls(call, args.requests) for label, call in driver_handles(args.max_tokens).items()})
            print("where the time goes, 1 client (sequential):", flush=True)
            for label, values in hops.items():
                row(label, values)
    finally:
        if project is not None:
            try:
                undeploy(project, APP)
            except Exception as exc:  # noqa: BLE001 - the head goes next anyway; say why, then stop it
                print(f"undeploy failed: {exc}", file=sys.stderr)
            raycluster.stop_local(project)
        upstream.terminate()
        upstream.join(10)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
