"""Serving throughput: the builtin model behind Ray Serve (dynamic batching) at 1, 4 and 16
concurrent clients, against the same model called sequentially in-process (one
`generate` per request). Prints requests/s, the ratio to sequential, and p50/p95 latency.

    python bench/serve_bench.py [--requests 64] [--max-tokens 32] [--port 8000]

Starts (or reuses) the project's local Ray head; deploys an application named
`serve-bench` with `auth: none`, and deletes it at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from llmops_engine.project import Project, ServeSettings, load_project
from llmops_engine.serving.config import ModelRef
from llmops_engine.serving.deploy import deploy, endpoint, undeploy
from llmops_engine.specs.deployment import DeploymentSpec

MODEL = "builtin:tiny-llama"
APP = "serve-bench"
QUESTIONS = [
    "How do I reset my password?", "Where can I download my invoice?", "Why was my card declined?",
    "How do I change the email on my account?", "Can I get a refund for an annual plan?",
    "The app crashes when I open settings.", "How do I export my data?", "Is there a student discount?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary(label: str, latencies: list[float], wall_s: float, baseline: float | None, note: str = "") -> dict:
    throughput = len(latencies) / wall_s
    row = {"mode": label, "rps": throughput, "p50_ms": percentile(latencies, 0.5) * 1000,
           "p95_ms": percentile(latencies, 0.95) * 1000, "ratio": throughput / baseline if baseline else 1.0}
    print(f"{label:<22} {row['rps']:8.2f} req/s  x{row['ratio']:5.2f}   p50 {row['p50_ms']:7.1f} ms   "
          f"p95 {row['p95_ms']:7.1f} ms   {note}", flush=True)
    return row


def sequential(store_root: Path, requests: int, max_tokens: int, threads: int) -> tuple[list[float], float]:
    import torch

    from llmops_engine.models import load_base

    torch.set_num_threads(threads)  # the same CPU budget as the replica: only batching differs
    model = load_base(MODEL, store_root)
    model.generate(["warm up"], max_new_tokens=max_tokens)
    latencies, started = [], time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        model.generate([QUESTIONS[i % len(QUESTIONS)]], max_new_tokens=max_tokens)
        latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - started


def served(url: str, clients: int, requests: int, max_tokens: int) -> tuple[list[float], float]:
    def one(i: int, client: httpx.Client) -> float:
        t = time.perf_counter()
        response = client.post(f"{url}/completions", json={
            "model": APP, "prompt": QUESTIONS[i % len(QUESTIONS)], "max_tokens": max_tokens, "temperature": 0})
        response.raise_for_status()
        return time.perf_counter() - t

    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        one(0, client)  # warm the connection and the replica
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = list(pool.map(lambda i: one(i, client), range(requests)))
        return latencies, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=None, help="Serve HTTP port (default: the project's)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-s", type=float, default=0.05, help="spec.batching.batch_wait_timeout_s (its default)")
    args = parser.parse_args()

    project = load_project()
    if args.port:
        project = Project(project.root, project.settings.model_copy(update={"serve": ServeSettings(port=args.port)}))
    store_root = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    spec = DeploymentSpec.model_validate({
        "model": "bench", "prompt": "bench", "gate": None, "auth": "none",
        "limits": {"max_new_tokens": args.max_tokens},
        "batching": {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_s},
    }).model_dump(mode="json")
    target = ModelRef(version="builtin", base=MODEL, store_root=str(store_root))

    outcome, _, _ = deploy(project, APP, spec, target, report=lambda line: None)
    try:
        from ray import serve

        slot = serve.get_deployment_handle(outcome.routing.primary, app_name=APP)
        threads = slot.info.remote().result(timeout_s=60)["torch_threads"]
        print(f"model {MODEL}, {args.requests} requests x {args.max_tokens} new tokens, "
              f"max_batch_size {args.max_batch_size}, torch threads per replica {threads}", flush=True)
        seq_latencies, seq_wall = sequential(store_root, args.requests, args.max_tokens, threads)
        baseline = summary("sequential in-process", seq_latencies, seq_wall, None)["rps"]
        url = endpoint(project)
        for clients in (1, 4, 16):
            before = slot.info.remote().result(timeout_s=60)
            latencies, wall = served(url, clients, args.requests, args.max_tokens)
            after = slot.info.remote().result(timeout_s=60)
            batches = after["batches"] - before["batches"]
            mean_batch = (after["mean_batch_size"] * after["batches"] - before["mean_batch_size"] * before["batches"]) / max(batches, 1)
            summary(f"serve, {clients:>2} clients", latencies, wall, baseline, f"mean batch {mean_batch:4.1f}")
    finally:
        undeploy(project, APP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
