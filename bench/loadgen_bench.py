"""Load-generator overhead: the CPU `llmops loadtest` itself spends, so that its numbers can be
trusted on a 2-core machine (a generator that needs a core of its own competes with the model).

    python bench/loadgen_bench.py [--clients 16] [--duration 10] [--chunks 8] [--gap-ms 0,5]

A minimal keep-alive OpenAI-style streaming server (asyncio, its own process on 127.0.0.1: it
answers every POST with `--chunks` content chunks, a usage chunk and [DONE], `gap` ms apart)
is loaded for `--duration` seconds at `--clients` clients by, in turn:

  llmops         run_load (what `llmops loadtest` and a rollout step run)
  httpx-plain    the same pool of httpx connections reading each stream to its end, nothing
                 parsed or timed: the floor of the HTTP client llmops uses
  aiohttp-plain  the same with aiohttp: a leaner client, for scale

For each: requests/s, this process's CPU time / wall (the generator's share of one core) and CPU
ms per request, and the ratio to httpx-plain. gap 0 saturates the server (the most requests a
second, the worst case for the generator); a gap of a few ms paces it like a model streaming
tokens. The server's own CPU is in another process and not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

READY_TIMEOUT_S = 10.0


# the server (another process) ------------------------------------------------------------------

def serve(port: int, chunks: int, gap_s: float) -> None:
    def event(data: dict) -> bytes:
        raw = b"data: " + json.dumps({"object": "chat.completion.chunk", **data}).encode() + b"\n\n"
        return f"{len(raw):x}\r\n".encode() + raw + b"\r\n"

    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    events = [event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
    events += [event({"choices": [{"index": 0, "delta": {"content": f" word{i}"}}]}) for i in range(chunks)]
    events += [event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
               event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": chunks, "total_tokens": 9 + chunks}})]
    done = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in request.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if gap_s:
                    writer.write(head)
                    for part in events:
                        await asyncio.sleep(gap_s)
                        writer.write(part)
                    writer.write(done)
                else:
                    writer.write(head + b"".join(events) + done)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(connection, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the bench server did not start")


# the generators --------------------------------------------------------------------------------

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "How do I reset my password?"}],
                   "max_tokens": 32, "stream": True, "stream_options": {"include_usage": True}}).encode()
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream", "Accept-Encoding": "identity"}


def llmops_load(url: str, clients: int, duration_s: float) -> tuple[int, dict]:
    from llmops_engine.loadtest.generator import run_load
    from llmops_engine.loadtest.target import Target

    result = run_load(Target(url, "m", None), clients, duration_s,
                      messages=[[{"role": "user", "content": "How do I reset my password?"}]])
    return result["ok"], result


async def httpx_plain(url: str, clients: int, duration_s: float) -> tuple[int, dict]:
    import httpx

    done = 0
    deadline = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30, trust_env=False) as http:
        async def user() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with http.stream("POST", url + "/chat/completions", content=BODY, headers=HEADERS) as response:
                    async for _ in response.aiter_raw():
                        pass
                done += 1
        await asyncio.gather(*(user() for _ in range(clients)))
    return done, {}


async def aiohttp_plain(url: str, clients: int, duration_s: float) -> tuple[int, dict]:
    import aiohttp

    done = 0
    deadline = time.perf_counter() + duration_s
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        async def user() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url + "/chat/completions", data=BODY, headers=HEADERS) as response:
                    async for _ in response.content.iter_any():
                        pass
                done += 1
        await asyncio.gather(*(user() for _ in range(clients)))
    return done, {}


GENERATORS = {
    "llmops": llmops_load,
    "httpx-plain": lambda *a: asyncio.run(httpx_plain(*a)),
    "aiohttp-plain": lambda *a: asyncio.run(aiohttp_plain(*a)),
}


def measure(name: str, url: str, clients: int, duration_s: float) -> dict:
    cpu, wall = time.process_time(), time.perf_counter()
    requests, result = GENERATORS[name](url, clients, duration_s)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"generator": name, "requests": requests, "wall_s": wall, "rps": requests / wall, "cpu_share": cpu / wall,
            "cpu_ms_per_request": 1000 * cpu / max(requests, 1), "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per answer")
    parser.add_argument("--gap-ms", default="0,5", help="comma-separated gaps between chunks, one scenario each")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.clients} clients, {args.duration:g} s per run, {args.chunks} chunks per answer")
    context = multiprocessing.get_context("spawn")
    for gap_ms in (float(g) for g in args.gap_ms.split(",")):
        port = free_port()
        server = context.Process(target=serve, args=(port, args.chunks, gap_ms / 1000), daemon=True)
        server.start()
        try:
            wait_ready(port)
            url = f"http://127.0.0.1:{port}/v1"
            measure("httpx-plain", url, args.clients, min(2.0, args.duration))  # warm-up: imports, connections
            rows = [measure(name, url, args.clients, args.duration) for name in GENERATORS]
        finally:
            server.terminate()
            server.join(5)
        report(gap_ms, rows)


def report(gap_ms: float, rows: list[dict]) -> None:
    base = next(row for row in rows if row["generator"] == "httpx-plain")
    print(f"\nchunk gap {gap_ms:g} ms")
    print(f"{'generator':<14} {'requests':>9} {'req/s':>8} {'CPU share':>10} {'CPU ms/req':>11} {'× httpx-plain':>14}")
    for row in rows:
        ratio = row["cpu_ms_per_request"] / base["cpu_ms_per_request"]
        print(f"{row['generator']:<14} {row['requests']:>9} {row['rps']:>8.1f} {row['cpu_share']:>9.0%} "
              f"{row['cpu_ms_per_request']:>11.3f} {ratio:>14.2f}")
    ours = next(row for row in rows if row["generator"] == "llmops")
    result = ours["result"]
    print(f"llmops measured: p50 {result['latency_ms']['p50']} ms, p95 {result['latency_ms']['p95']} ms, "
          f"TTFT p50 {result['ttft_ms']['p50']} ms, errors {result['errors']}, {result['tokens_per_s']:.0f} tokens/s")
    for rps in (10, 100):
        print(f"  at {rps} req/s (a served model's range) llmops would use {ours['cpu_ms_per_request'] * rps / 10:.1f} % "
              "of one core")


if __name__ == "__main__":
    main()
