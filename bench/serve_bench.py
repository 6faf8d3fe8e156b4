"""Serving throughput: a base model behind Ray Serve (dynamic batching) at 1, 4 and 16
concurrent clients, against the same model called in-process — sequentially (one `generate`
per request) and in batches of `--max-batch-size` (the best a replica could do). Prints
requests/s and its ratio to sequential, completion tokens/s and its ratio to the batched
baseline, and p50/p95 latency.

    python bench/serve_bench.py [--model builtin:tiny-llama] [--requests 64] [--max-tokens 32] [--port 8000]

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

APP = "serve-bench"
QUESTIONS = [
    "How do I reset my password?", "Where can I download my invoice?", "Why was my card declined?",
    "How do I change the email on my account?", "Can I get a refund for an annual plan?",
    "The app crashes when I open settings.", "How do I export my data?", "Is there a student discount?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary(label: str, latencies: list[float], wall_s: float, tokens: int, baselines: dict, note: str = "") -> dict:
    throughput = len(latencies) / wall_s
    row = {"mode": label, "rps": throughput, "tokens_per_s": tokens / wall_s, "p50_ms": percentile(latencies, 0.5) * 1000,
           "p95_ms": percentile(latencies, 0.95) * 1000}
    vs_sequential = throughput / baselines["rps"]
    vs_batched = row["tokens_per_s"] / baselines["tokens_per_s"]
    print(f"{label:<22} {row['rps']:7.2f} req/s x{vs_sequential:5.2f}  {row['tokens_per_s']:7.1f} tok/s "
          f"x{vs_batched:5.2f} of batched   p50 {row['p50_ms']:7.1f} ms   p95 {row['p95_ms']:7.1f} ms   {note}", flush=True)
    return row


def in_process(model_ref: str, store_root: Path, requests: int, max_tokens: int, threads: int, batch: int):
    """(sequential latencies, wall, tokens), (batched wall, tokens): the model called directly."""
    import torch

    from llmops_engine.models import load_base

    torch.set_num_threads(threads)  # the same CPU budget as the replica: only batching differs
    model = load_base(model_ref, store_root)
    model.generate(["warm up"], max_new_tokens=max_tokens)
    prompts = [QUESTIONS[i % len(QUESTIONS)] for i in range(requests)]
    latencies, tokens, started = [], 0, time.perf_counter()
    for prompt in prompts:
        t = time.perf_counter()
        tokens += model.generate([prompt], max_new_tokens=max_tokens)[0].completion_tokens
        latencies.append(time.perf_counter() - t)
    sequential = (latencies, time.perf_counter() - started, tokens)
    batched_tokens, started = 0, time.perf_counter()
    for i in range(0, requests, batch):
        batched_tokens += sum(g.completion_tokens for g in model.generate(prompts[i:i + batch], max_new_tokens=max_tokens))
    return sequential, (time.perf_counter() - started, batched_tokens)


def served(url: str, clients: int, requests: int, max_tokens: int) -> tuple[list[float], float, int]:
    def one(i: int, client: httpx.Client) -> tuple[float, int]:
        t = time.perf_counter()
        response = client.post(f"{url}/completions", json={
            "model": APP, "prompt": QUESTIONS[i % len(QUESTIONS)], "max_tokens": max_tokens, "temperature": 0})
        response.raise_for_status()
        return time.perf_counter() - t, response.json()["usage"]["completion_tokens"]

    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=clients)) as client:
        one(0, client)  # warm the connection and the replica
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda i: one(i, client), range(requests)))
        return [r[0] for r in results], time.perf_counter() - started, sum(r[1] for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-llama", help="base model ref, e.g. builtin:smollm2-135m-instruct")
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
    target = ModelRef(version="builtin", base=args.model, store_root=str(store_root))

    outcome, _, _ = deploy(project, APP, spec, target, report=lambda line: None)
    try:
        from ray import serve

        slot = serve.get_deployment_handle(outcome.routing.primary, app_name=APP)
        threads = slot.info.remote().result(timeout_s=60)["torch_threads"]
        print(f"model {args.model}, {args.requests} requests x {args.max_tokens} new tokens, "
              f"max_batch_size {args.max_batch_size}, torch threads per replica {threads}", flush=True)
        (seq_latencies, seq_wall, seq_tokens), (batch_wall, batch_tokens) = in_process(
            args.model, store_root, args.requests, args.max_tokens, threads, args.max_batch_size)
        baselines = {"rps": len(seq_latencies) / seq_wall, "tokens_per_s": batch_tokens / batch_wall}
        print(f"{'batched in-process':<22} {'':>20}{baselines['tokens_per_s']:7.1f} tok/s (batches of "
              f"{args.max_batch_size})", flush=True)
        summary("sequential in-process", seq_latencies, seq_wall, seq_tokens, baselines)
        url = endpoint(project)
        for clients in (1, 4, 16):
            before = slot.info.remote().result(timeout_s=60)
            latencies, wall, tokens = served(url, clients, args.requests, args.max_tokens)
            after = slot.info.remote().result(timeout_s=60)
            batches = after["batches"] - before["batches"]
            mean_batch = (after["mean_batch_size"] * after["batches"] - before["mean_batch_size"] * before["batches"]) / max(batches, 1)
            summary(f"serve, {clients:>2} clients", latencies, wall, tokens, baselines, f"mean batch {mean_batch:4.1f}")
    finally:
        undeploy(project, APP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
