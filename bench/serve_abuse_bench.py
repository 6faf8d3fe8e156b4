"""Hostile load: 64 concurrent clients against a live deployment of the builtin model, with
and without 10 % hostile requests (issue 12's reproductions), in alternating rounds so both
mixes see the same machine. Prints well-formed requests sent / succeeded / lost (lost must be
0), the status histogram of the hostile requests, and p50/p95 latency of the well-formed
requests in the clean and the mixed rounds.

    python bench/serve_abuse_bench.py [--clients 64] [--rounds 6] [--per-client 2] [--max-seconds 150]

Starts its own local Ray head in a temporary project (Serve on a free port of 127.0.0.1,
`auth: none`), and stops it at the end. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from llmops_engine import raycluster
from llmops_engine.project import Project, ProjectSettings
from llmops_engine.serving.config import ModelRef
from llmops_engine.serving.deploy import deploy, endpoint, undeploy
from llmops_engine.specs.deployment import DeploymentSpec

MODEL = "builtin:tiny-llama"
APP = "abuse-bench"
QUESTIONS = ["How do I reset my password?", "Where can I download my invoice?", "Why was my card declined?",
             "How do I export my data?", "Is there a student discount?", "The app crashes in settings."]


def _well_formed(i: int) -> tuple[str, dict[str, Any]]:
    """Chat, greedy and seeded sampled completions, and small multi-prompt completions."""
    question = QUESTIONS[i % len(QUESTIONS)]
    kind = i % 10
    if kind < 6:
        return "chat/completions", {"model": APP, "messages": [{"role": "user", "content": question}], "max_tokens": 16}
    if kind < 9:
        return "completions", {"model": APP, "prompt": question, "max_tokens": 16, "temperature": 0.7, "seed": i}
    return "completions", {"model": APP, "prompt": QUESTIONS[:4], "max_tokens": 16, "temperature": 0}


HOSTILE: list[tuple[str, str, dict[str, Any] | bytes]] = [
    ("empty prompt", "completions", {"model": APP, "prompt": ""}),
    ("[\"\"] prompt", "completions", {"model": APP, "prompt": [""]}),
    ("[] prompt", "completions", {"model": APP, "prompt": []}),
    ("seed 2^64", "completions", {"model": APP, "prompt": "hi", "temperature": 0.7, "seed": 2**64}),
    ("temperature 5e-324", "completions", {"model": APP, "prompt": "hi", "temperature": 5e-324}),
    ("temperature NaN", "completions", b'{"model": "%s", "prompt": "hi", "temperature": NaN}' % APP.encode()),
    ("1,024 prompts", "completions", {"model": APP, "prompt": ["a"] * 1024}),
    ("text part 5", "chat/completions", {"model": APP, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}),
    ("text part null", "chat/completions", {"model": APP, "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}),
    ("text part list", "chat/completions", {"model": APP, "messages": [{"role": "user", "content": [{"type": "text", "text": ["a"]}]}]}),
]


class Round:
    """One round: every client sends `per_client` requests back to back; every answer is kept."""

    def __init__(self, url: str, hostile_share: float, deadline: float):
        self.url, self.hostile_share, self.deadline = url, hostile_share, deadline
        self.latencies: list[float] = []
        self.sent = self.succeeded = 0
        self.lost: list[str] = []
        self.hostile: Counter = Counter()
        self.lock = threading.Lock()

    def client(self, per_client: int, counter: itertools.count) -> None:
        with httpx.Client(timeout=120) as http:
            for _ in range(per_client):
                if time.monotonic() > self.deadline:
                    return
                i = next(counter)
                # Every 10th request (by global order) is hostile in a mixed round: 10 % exactly.
                if self.hostile_share and i % round(1 / self.hostile_share) == 0:
                    self._send_hostile(http, i)
                else:
                    self._send_well_formed(http, i)

    def _send_well_formed(self, http: httpx.Client, i: int) -> None:
        path, body = _well_formed(i)
        started = time.perf_counter()
        outcome = self._post(http, path, body)
        with self.lock:
            self.sent += 1
            if outcome == 200:
                self.succeeded += 1
                self.latencies.append(time.perf_counter() - started)
            else:
                self.lost.append(f"{path} -> {outcome}")

    def _send_hostile(self, http: httpx.Client, i: int) -> None:
        label, path, body = HOSTILE[(i // 10) % len(HOSTILE)]
        outcome = self._post(http, path, body)
        with self.lock:
            self.hostile[(label, outcome)] += 1

    def _post(self, http: httpx.Client, path: str, body) -> int | str:
        """The status code, or the name of the transport error."""
        try:
            if isinstance(body, bytes):
                return http.post(f"{self.url}/{path}", content=body, headers={"content-type": "application/json"}).status_code
            return http.post(f"{self.url}/{path}", json=body).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__


def run_round(url: str, clients: int, per_client: int, hostile_share: float, deadline: float) -> Round:
    state, counter = Round(url, hostile_share, deadline), itertools.count()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(state.client, per_client, counter) for _ in range(clients)]:
            future.result()
    return state


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] if ordered else float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6, help="alternating clean / mixed rounds")
    parser.add_argument("--per-client", type=int, default=2, help="requests per client per round")
    parser.add_argument("--max-seconds", type=float, default=150, help="stop sending after this long")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="serve-abuse-bench-"))
    project = Project(root, ProjectSettings(ray={"num_cpus": os.cpu_count() or 2}, serve={"port": _free_port()}))
    spec = DeploymentSpec.model_validate({
        "model": "bench", "prompt": "bench", "gate": None, "auth": "none", "limits": {"max_new_tokens": 16},
    }).model_dump(mode="json")
    started = time.monotonic()
    try:
        raycluster.connect(project)
        deploy(project, APP, spec, ModelRef(version="builtin", base=MODEL, store_root=str(root)),
                                 report=lambda line: None)
        print(f"deployed in {time.monotonic() - started:.0f} s; {args.clients} clients, {args.rounds} rounds of "
              f"{args.clients * args.per_client} requests, batching {spec['batching']}", flush=True)
        url, deadline = endpoint(project), time.monotonic() + args.max_seconds
        run_round(url, args.clients, 1, 0.0, deadline)  # warm-up: connections, first batches; not counted
        rounds = [run_round(url, args.clients, args.per_client, 0.1 if r % 2 else 0.0, deadline) for r in range(args.rounds)]
        undeploy(project, APP)
    finally:
        raycluster.stop_local(project)
    return report(rounds, time.monotonic() - started)


def report(rounds: list[Round], wall_s: float) -> int:
    sent = sum(r.sent for r in rounds)
    succeeded = sum(r.succeeded for r in rounds)
    lost = [line for r in rounds for line in r.lost]
    print(f"well-formed: sent {sent}, succeeded {succeeded}, lost {len(lost)} {Counter(lost).most_common(5) if lost else ''}")
    hostile = sum((r.hostile for r in rounds), Counter())
    statuses = Counter()
    for (label, status), count in sorted(hostile.items(), key=str):
        statuses[status] += count
        print(f"  hostile {label:<20} -> {status} x{count}")
    print(f"hostile: sent {sum(hostile.values())}, status histogram {dict(statuses)}")
    for name, share in (("clean", 0.0), ("10 % hostile", 0.1)):
        latencies = [x for r in rounds if r.hostile_share == share for x in r.latencies]
        print(f"well-formed latency, {name:<13} rounds: n {len(latencies):4d}  p50 {percentile(latencies, 0.5) * 1000:7.1f} ms"
              f"  p95 {percentile(latencies, 0.95) * 1000:7.1f} ms")
    print(f"total wall time {wall_s:.0f} s")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
